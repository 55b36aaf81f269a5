"Drift monitoring from data capture, as a user runs it: train on FF++, `serve --capture`, post real videos, `monitor`."
from __future__ import annotations
import base64, hashlib, json, shutil, subprocess, tarfile, time, urllib.error, urllib.request
from pathlib import Path

import pandas as pd
import pytest

from aws import REGION, ROLE, environ, moto_server
from helpers import describe, run_cli

VERSION = "monitor-1"  # the packaged model's version: the answers carry it, the monitor recognises them by it
# one window over the whole test run: hourly windows would split a run that crosses the hour
WINDOW = ["--window", "1d"]


@pytest.fixture(scope="module")
def monitored(ffpp, ffpp_faces, tmp_path_factory):
    "A model trained on the FF++ sample (8 frames a video, one epoch) and its model.tar.gz: (folder, tar, test videos)."
    work = tmp_path_factory.mktemp("monitored")
    # the default 16 crops a video: with 4 the model's validation probabilities all lay within 0.02 of 0.51, and its
    # test videos' outside that range, which the monitor rightly calls a shift (94% of validation videos FAKE, 38% of test)
    proc = run_cli("train", ffpp_faces, "--out", work/"model", "--epochs", 1)
    assert proc.returncode == 0, describe(proc)
    from deepfake_mlops.inference import package_model
    from deepfake_mlops.manifest import read_manifest
    tar = package_model(work/"model", work/"model.tar.gz", version=VERSION)
    split = pd.read_csv(work/"model"/"split.csv")
    manifest = read_manifest(ffpp)
    test = manifest[manifest["video_id"].isin(split.loc[split["split"] == "test", "video_id"])].reset_index(drop=True)
    return work/"model", tar, test


def _post(url:str, body:bytes, kind:str="video/mp4") -> int:
    req = urllib.request.Request(url + "/invocations", data=body, headers={"Content-Type": kind})
    try:
        with urllib.request.urlopen(req, timeout=300) as r: return r.status
    except urllib.error.HTTPError as e: return e.code


def _lines(folder:Path) -> list[dict]:
    return [json.loads(l) for f in sorted(folder.rglob("*.jsonl")) for l in f.read_text().splitlines()]


def _stop(start_server, url, folder:Path, posted:int):
    "Stop a server once its capture holds a line per request posted (it writes each after answering)."
    # whole lines only: a large line (a kept video) can be read while it is being written
    written = lambda: sum(f.read_text().count("\n") for f in folder.rglob("*.jsonl"))
    deadline = time.time() + 30
    while written() < posted and time.time() < deadline: time.sleep(0.1)
    proc = start_server.procs[url]
    proc.terminate(); proc.wait(10)


def _capture(start_server, tar, folder:Path, videos) -> Path:
    "Serve `tar` with --capture FOLDER, post each video, stop the server; returns the folder."
    url = start_server(tar, args=("--capture", folder))
    for video in videos: assert _post(url, Path(video).read_bytes()) == 200, video
    _stop(start_server, url, folder, len(videos))
    return folder


@pytest.fixture(scope="module")
def captures(monitored, datasets, start_server, tmp_path_factory):
    "Capture folders of the FF++ test videos as they are, re-encoded at CRF 35, downscaled to 360p, and of the DFDC sample."
    from deepfake_mlops.robustness import degrade_dataset
    _, tar, test = monitored
    work = tmp_path_factory.mktemp("captures")
    videos = {"ffpp": list(test["path"]), "dfdc": sorted((datasets/"dfdc").rglob("*.mp4"))}
    # ultrafast: the copies only need to be harder compressed or smaller, not well encoded (3x faster than veryfast here);
    # its quantisers are those of any x264 preset at the same CRF, its sharpness is not (no deblocking: nbs/12b_monitor.ipynb)
    for name in ("crf35", "360p"):
        copies = degrade_dataset(test, work/"degraded", name, workers=2, progress=False, preset="ultrafast")
        assert (copies["status"] != "failed").all(), copies
        videos[name] = list(copies["path"])
    return {name: _capture(start_server, tar, work/name, v) for name, v in videos.items()}


def _monitor(capture, model, out:Path, env=None) -> tuple[subprocess.CompletedProcess, dict]:
    proc = run_cli("monitor", capture, "--model", model, "--out", out, *WINDOW, env=env)
    report = json.loads((out/"monitor.json").read_text()) if (out/"monitor.json").exists() else None
    return proc, report


def test_a_trained_model_keeps_its_validation_baseline_and_packs_it(monitored):
    folder, tar, _ = monitored
    text = (folder/"baseline.json").read_text()
    baseline = json.loads(text)
    split = pd.read_csv(folder/"split.csv")
    assert baseline["videos"] == (split["split"] == "val").sum()
    for name in ("probability", "face_width", "face_score", "sharpness", "qp"):
        assert len(baseline["statistics"][name]) == baseline["videos"], name
    assert all(10 < q < 45 for q in baseline["statistics"]["qp"])  # every FF++ video is H.264 (c23)
    assert all(0 <= p <= 1 for p in baseline["statistics"]["probability"])
    assert len(text) < 8000, len(text)  # per-video values only
    with tarfile.open(tar) as t: assert t.extractfile("baseline.json").read().decode() == text


def test_the_ffpp_test_videos_raise_no_alarm(monitored, captures, tmp_path):
    _, tar, test = monitored
    proc, report = _monitor(captures["ffpp"], tar, tmp_path)
    assert proc.returncode == 0, describe(proc)
    assert report["records"] == len(test) and not report["alarm"]["raised"] and report["problems"] == []
    window = report["windows"][0]
    assert window["requests"] == window["answers"] == len(test) and window["errors"] == 0
    assert window["latency_ms_p50"] > 0 and all(t["p"] is not None for t in window["statistics"].values())
    assert "no drift" in proc.stdout
    html = (tmp_path/"monitor.html").read_text()
    assert html.count("data:image/png;base64,") == 6  # the counts and the five statistics, embedded


def test_a_360p_rendition_raises_an_alarm_naming_the_face_width(monitored, captures, tmp_path):
    _, tar, _ = monitored
    proc, report = _monitor(captures["360p"], tar, tmp_path)
    assert proc.returncode == 1, describe(proc)
    assert "face_width" in report["alarm"]["windows"][0]["statistics"]
    assert "ALARM: face_width" in proc.stdout


def test_a_crf35_reencode_raises_an_alarm_naming_the_quantiser(monitored, captures, tmp_path):
    _, tar, _ = monitored
    proc, report = _monitor(captures["crf35"], tar, tmp_path)
    assert proc.returncode == 1, describe(proc)
    window = report["windows"][0]
    assert "qp" in report["alarm"]["windows"][0]["statistics"], window["statistics"]
    # re-encoded harder: a higher quantiser than any but the baseline's top 5%, in most videos
    assert window["statistics"]["qp"]["median"] > window["statistics"]["qp"]["baseline_median"] + 5
    alarms = [l for l in proc.stdout.splitlines() if l.startswith("ALARM: ")]
    assert alarms and "qp" in alarms[0].split(" shifted")[0], proc.stdout


def test_the_dfdc_sample_raises_an_alarm_naming_what_shifted(monitored, captures, tmp_path):
    _, tar, _ = monitored
    proc, report = _monitor(captures["dfdc"], tar, tmp_path)
    assert proc.returncode == 1, describe(proc)
    shifted = report["alarm"]["windows"][0]["statistics"]
    assert shifted and f"ALARM: {', '.join(shifted)} shifted" in proc.stdout


def test_bad_capture_lines_are_reported_with_file_and_line_and_the_rest_analysed(monitored, captures, tmp_path):
    _, tar, test = monitored
    bad = tmp_path/"capture"
    shutil.copytree(captures["ffpp"], bad)
    file = sorted(bad.rglob("*.jsonl"))[0]
    lines = file.read_text().splitlines(keepends=True)
    other = json.loads(lines[0])
    answer = json.loads(other["captureData"]["endpointOutput"]["data"]) | {"model_version": "another-7"}
    other["captureData"]["endpointOutput"]["data"] = json.dumps(answer)
    # a line that is not JSON in the middle, another model's record, and a last line cut short by a killed server
    file.write_text("".join(lines[:2]) + "not json at all\n" + "".join(lines[2:]) + json.dumps(other) + "\n" + lines[1][:100])
    proc, report = _monitor(bad, tar, tmp_path/"report")
    clean_proc, clean = _monitor(captures["ffpp"], tar, tmp_path/"clean")
    assert proc.returncode == clean_proc.returncode == 0, describe(proc)
    wheres = {p["where"]: p["what"] for p in report["problems"]}
    n = len(lines)
    assert wheres == {f"{file}:3": "not JSON", f"{file}:{n + 2}": f"an answer of model version 'another-7', not '{VERSION}'",
                      f"{file}:{n + 3}": "truncated line (the writer stopped mid-line)"}, wheres
    assert report["records"] == len(test)
    assert report["windows"][0]["statistics"] == clean["windows"][0]["statistics"]
    assert f"{file}:3" in proc.stdout


def test_an_s3_capture_prefix_gives_the_same_report_as_the_folder(monitored, captures, tmp_path):
    import boto3
    _, tar, _ = monitored
    folder = captures["ffpp"]
    with moto_server() as env:
        with environ(env):
            s3 = boto3.client("s3", region_name=REGION)
            s3.create_bucket(Bucket="capture", CreateBucketConfiguration={"LocationConstraint": REGION})
            for f in folder.rglob("*.jsonl"): s3.upload_file(str(f), "capture", f"data-capture/{f.relative_to(folder)}")
        proc, report = _monitor("s3://capture/data-capture", tar, tmp_path/"s3", env=env)
    _, local = _monitor(folder, tar, tmp_path/"local")
    assert proc.returncode == 0, describe(proc)
    assert report["windows"] == local["windows"] and report["records"] == local["records"]


def test_capture_records_are_sagemaker_records_with_no_video_unless_asked(monitored, captures, start_server, tmp_path):
    _, tar, test = monitored
    lines = _lines(captures["ffpp"])
    assert len(lines) == len(test)
    sizes = {Path(p).stat().st_size: hashlib.sha256(Path(p).read_bytes()).hexdigest() for p in test["path"]}
    for r in lines:
        assert set(r) == {"captureData", "eventMetadata", "eventVersion"} and r["eventMetadata"]["inferenceTime"].endswith("Z")
        given, answer = r["captureData"]["endpointInput"], r["captureData"]["endpointOutput"]
        assert (given["mode"], given["encoding"], answer["mode"], answer["encoding"]) == ("INPUT", "JSON", "OUTPUT", "JSON")
        about = json.loads(given["data"])
        assert set(about) == {"bytes", "contentType", "sha256"} and sizes[about["bytes"]] == about["sha256"]
        assert json.loads(answer["data"])["model_version"] == VERSION
    # the folders are SageMaker's: ENDPOINT/VARIANT/YYYY/MM/DD/HH/FILE
    files = list(captures["ffpp"].rglob("*.jsonl"))
    assert all(len(f.relative_to(captures["ffpp"]).parts) == 7 for f in files)
    # --capture-inputs keeps the body; a refused request is captured too, with its status
    video = Path(min(test["path"], key=lambda p: Path(p).stat().st_size))
    url = start_server(tar, args=("--capture", tmp_path/"kept", "--capture-inputs"))
    assert _post(url, video.read_bytes()) == 200 and _post(url, b"a,b", "text/csv") == 415
    _stop(start_server, url, tmp_path/"kept", 2)
    kept = _lines(tmp_path/"kept")
    assert base64.b64decode(kept[0]["captureData"]["endpointInput"]["data"]) == video.read_bytes()
    assert [r["eventMetadata"]["status"] for r in kept] == [200, 415]


def test_a_model_without_a_baseline_is_refused_in_one_line(monitored, captures, tmp_path):
    folder, _, _ = monitored
    old = tmp_path/"old-model"
    shutil.copytree(folder, old, ignore=shutil.ignore_patterns("baseline.json", "checkpoints"))
    proc = run_cli("monitor", captures["ffpp"], "--model", old, "--out", tmp_path/"out")
    assert proc.returncode == 2, describe(proc)
    assert len(proc.stderr.strip().splitlines()) == 1 and "no baseline.json" in proc.stderr and "retrain" in proc.stderr


def test_the_monitoring_processing_job_is_accepted_by_sagemaker():
    import boto3
    from deepfake_mlops.monitor import MONITOR_COMMAND, monitoring_job_request, pipeline_image
    image = pipeline_image(REGION)
    request = monitoring_job_request("deepfake-monitor-1", ROLE, image, "s3://capture/data-capture/deepfake-detection-prod",
                                     "s3://models/deepfake-detection/model.tar.gz", "s3://reports/monitor/1")
    with moto_server() as env, environ(env):
        sm = boto3.client("sagemaker", region_name=REGION)
        sm.create_processing_job(**request)
        job = sm.describe_processing_job(ProcessingJobName="deepfake-monitor-1")
    assert job["AppSpecification"]["ImageUri"] == image and "pytorch-training" in image
    assert MONITOR_COMMAND in job["AppSpecification"]["ContainerEntrypoint"][-1]
    inputs = {i["InputName"]: i["S3Input"] for i in job["ProcessingInputs"]}
    assert inputs["capture"]["LocalPath"] == "/opt/ml/processing/capture"
    assert inputs["model"]["S3Uri"] == "s3://models/deepfake-detection/model.tar.gz"
    assert job["ProcessingOutputConfig"]["Outputs"][0]["S3Output"]["LocalPath"] == "/opt/ml/processing/report"
