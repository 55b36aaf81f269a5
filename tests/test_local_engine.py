"""The local engine: the SageMaker pipeline's definition run on this machine, with cache, executions and registry."""
from __future__ import annotations
import json, subprocess, sys, time
from pathlib import Path

import pandas as pd
import pytest

from deepfake_mlops.engine import LocalEngine
from deepfake_mlops.local import local_definition, run_local
from deepfake_mlops.registry import Registry
from deepfake_mlops.steps import merge_shards

from helpers import FFPP_RUN, describe, run_cli

REPO = Path(__file__).resolve().parents[1]
# engine mechanics, not model quality: a short run whose gate always opens
FAST = ["--param", "FramesPerVideo=8", "--param", "Epochs=1", "--param", "BatchSize=16", "--param", "MinAuc=0"]


def only_preprocess(extra_args:list[str]=()) -> dict:
    "The pipeline's own definition cut down to its Preprocess step, with container arguments added."
    d, _ = local_definition()
    pre = next(s for s in d["Steps"] if s["Name"] == "Preprocess")
    pre["Arguments"]["AppSpecification"]["ContainerArguments"] += list(extra_args)
    d["Steps"] = [pre]
    return d


def faces_output(execution:dict, root:Path) -> Path:
    uri = execution["steps"][0]["properties"]["ProcessingOutputConfig.Outputs['faces'].S3Output.S3Uri"]
    return LocalEngine(root).store.path(uri)


def test_a_changed_step_argument_is_what_the_local_run_executes(demo_clips, tmp_path):
    # the engine reads the graph from the definition: edit an argument there and the job sees it
    execution = run_local(tmp_path/"engine", demo_clips, ["FramesPerVideo=4"], definition=only_preprocess(["--margin", "0.45"]), log=lambda *_: None)
    assert execution["status"] == "Succeeded", execution["message"]
    settings = json.loads((faces_output(execution, tmp_path/"engine")/"algo-1"/"extraction.json").read_text())
    assert settings["margin"] == 0.45 and settings["frames"] == 4


def test_the_pipeline_runs_on_tar_shards_read_where_they_lie(demo_clips, tmp_path):
    # CropLayout=shards: two instances write their own shards, training and evaluation read them in place
    proc = run_cli("run", "--root", tmp_path/"engine", "--data", demo_clips, *FAST, "--param", "CropLayout=shards",
                   "--param", "ProcessingInstanceCount=2", timeout=1500)
    assert proc.returncode == 0, describe(proc)
    root = tmp_path/"engine"
    written = sorted(p.name for p in (root/"store").rglob("*.tar"))
    assert [n.split("-0")[0] for n in written] == ["algo-1", "algo-2"], written  # a shard of each instance's own
    merged = next((root/"executions").rglob("merged-train"))
    index = pd.read_csv(merged/"faces.csv", dtype=str, keep_default_na=False)
    crops = index[index["crop_path"] != ""]
    assert {Path(s).name for s in crops["shard"]} == set(written)
    assert sorted(p.name for p in merged.iterdir()) == ["extraction.json", "faces.csv", "manifest.csv"]  # nothing copied
    assert Registry(root/"registry.db").get("deepfake-detection", 1)["status"] == "PendingManualApproval"


def test_preprocess_shards_videos_across_instances(ffpp, tmp_path):
    # a labels.csv slice of the FaceForensics++ sample, extracted by two "instances"
    videos = sorted(ffpp.rglob("*.mp4"))[:6]
    data = tmp_path/"slice"; data.mkdir()
    rows = []
    for i, v in enumerate(videos):
        (data/f"v{i}.mp4").symlink_to(v)
        rows.append(dict(path=f"v{i}.mp4", label="FAKE" if "manipulated" in str(v) else "REAL", group=f"g{i}"))
    pd.DataFrame(rows).to_csv(data/"labels.csv", index=False)
    execution = run_local(tmp_path/"engine", data, ["FramesPerVideo=4", "ProcessingInstanceCount=2"], definition=only_preprocess(),
                          log=lambda *_: None)
    assert execution["status"] == "Succeeded", execution["message"]
    out = faces_output(execution, tmp_path/"engine")
    shards = {h: set(pd.read_csv(out/h/"videos.csv")["video_id"]) for h in ("algo-1", "algo-2")}
    assert shards["algo-1"] and shards["algo-2"] and not shards["algo-1"] & shards["algo-2"]
    assert len(shards["algo-1"] | shards["algo-2"]) == 6
    merged = merge_shards(out, tmp_path/"merged")
    assert pd.read_csv(merged/"faces.csv")["video_id"].nunique() == 6


@pytest.mark.parametrize("args,message", [
    (["--param", "Epoch=2"], "unknown pipeline parameter 'Epoch'"),
    (["--param", "Epochs=two"], "parameter Epochs is a Integer"),
    (["--param", "ModelApprovalStatus=Maybe"], "must be one of"),
])
def test_bad_parameters_fail_before_anything_runs(tmp_path, args, message):
    proc = run_cli("run", "--root", tmp_path/"engine", "--data", tmp_path, *args)
    assert proc.returncode == 2 and message in proc.stderr, describe(proc)
    assert not (tmp_path/"engine"/"executions").exists()


def test_a_folder_without_videos_is_refused(tmp_path):
    (tmp_path/"empty").mkdir()
    proc = run_cli("run", "--root", tmp_path/"engine", "--data", tmp_path/"empty")
    assert proc.returncode == 2 and "matches no dataset layout" in proc.stderr and str(tmp_path/"empty") in proc.stderr, describe(proc)
    assert not (tmp_path/"engine"/"executions").exists()


def test_a_failing_step_is_named_with_its_log_and_registers_nothing(demo_clips, tmp_path):
    root = tmp_path/"engine"
    good = run_cli("run", "--root", root, "--data", demo_clips, *FAST)
    assert good.returncode == 0, describe(good)
    # the run says what happens as it happens: each step as it starts, and the jobs' own progress lines
    assert "Preprocess: started (Processing)" in good.stdout and "[algo-1] algo-1 (1 of 1): 12 videos" in good.stdout, describe(good)
    assert "[algo-1] epoch 1: loss" in good.stdout, describe(good)
    before = Registry(root/"registry.db").list()
    broken = tmp_path/"broken"; broken.mkdir()
    for i in range(3): (broken/f"clip{i}.mp4").write_bytes(b"not a video at all" * 50)
    pd.DataFrame([dict(path=f"clip{i}.mp4", label="REAL" if i else "FAKE") for i in range(3)]).to_csv(broken/"labels.csv", index=False)
    proc = run_cli("run", "--root", root, "--data", broken, *FAST)
    assert proc.returncode == 1, describe(proc)
    assert "step Preprocess failed" in proc.stdout and "(log: " in proc.stdout and "nothing registered" in proc.stdout, describe(proc)
    log = proc.stdout.split("(log: ", 1)[1].split(")", 1)[0]
    assert Path(log).exists() and "clip0.mp4" in Path(log).read_text()
    assert Registry(root/"registry.db").list() == before
    # the store and the cache are unharmed: the good run is still served from the cache
    again = run_cli("run", "--root", root, "--data", demo_clips, *FAST)
    assert again.returncode == 0 and again.stdout.count(": cached") == 3, describe(again)


FFPP = FFPP_RUN  # the FF++ settings (tests/helpers.py says why)


@pytest.fixture(scope="module")
def ffpp_run(ffpp, ffpp_run_started):
    "`deepfake-mlops run --data ffpp` with the FF++ settings, started in the background by tests/conftest.py."
    root, proc, out = ffpp_run_started
    proc.wait(timeout=1500)
    done = subprocess.CompletedProcess(proc.args, proc.returncode, out.read_text(), "")
    assert done.returncode == 0, describe(done)
    return root, done


def test_ffpp_run_registers_a_pending_version_with_metrics_and_lineage(ffpp_run):
    root, proc = ffpp_run
    assert "registered deepfake-detection:1" in proc.stdout, describe(proc)
    record = Registry(root/"registry.db").get("deepfake-detection", 1)
    assert record["status"] == "PendingManualApproval"
    # the registered metrics are the ones this execution's Evaluate step wrote, and its AUC is that of the test videos' scores
    from sklearn.metrics import roc_auc_score
    from deepfake_mlops.local import evaluation_folder
    execution_id = proc.stdout.split("execution ", 1)[1].split()[0].rstrip(":")
    folder = evaluation_folder(root, LocalEngine(root).describe(execution_id))
    evaluation = json.loads((folder/"evaluation.json").read_text())
    assert record["metrics"] == {k: v["value"] for k, v in evaluation["binary_classification_metrics"].items()}, record["metrics"]
    videos = pd.read_csv(folder/"videos.csv")
    assert record["metrics"]["auc"] == pytest.approx(roc_auc_score(videos["target"], videos["prob"]), abs=1e-9)
    lineage = record["lineage"]
    assert lineage["execution_id"] == execution_id and LocalEngine(root).store.path(lineage["evaluation"]) == folder/"evaluation.json"
    assert len(lineage["data_manifest_sha256"]) == 64 and lineage["code"]["bundle"].endswith("sourcedir.tar.gz")
    assert lineage["parameters"]["InputData"].endswith("ffpp") and Path(record["model_data"]).exists()
    listed = run_cli("models", "list", "--root", root)
    assert "deepfake-detection:1" in listed.stdout and "PendingManualApproval" in listed.stdout


def test_ffpp_second_run_is_served_from_cache(ffpp_run, ffpp):
    root = ffpp_run[0]
    t0 = time.perf_counter()
    proc = run_cli("run", "--root", root, "--data", ffpp, *FFPP)
    seconds = time.perf_counter() - t0
    assert proc.returncode == 0, describe(proc)
    assert proc.stdout.count(": cached") == 3 and seconds < 30, (seconds, describe(proc))
    execution = proc.stdout.split("execution ", 1)[1].split()[0].rstrip(":")
    shown = run_cli("executions", "show", execution, "--root", root)
    assert shown.stdout.count("cache hit") == 3, describe(shown)


def test_ffpp_unreachable_gate_registers_nothing_and_says_why(ffpp_run, ffpp):
    root = ffpp_run[0]
    before = len(Registry(root/"registry.db").list())
    auc = Registry(root/"registry.db").get("deepfake-detection", 1)["metrics"]["auc"]
    if auc == 1: pytest.skip("the model separates every test video: no MinAuc can close the gate")
    proc = run_cli("run", "--root", root, "--data", ffpp, *FFPP, "--param", "MinAuc=1")
    assert proc.returncode == 1, describe(proc)
    assert "is below MinAuc 1" in proc.stdout and "nothing registered" in proc.stdout, describe(proc)
    assert len(Registry(root/"registry.db").list()) == before


def test_ffpp_papermill_local_report_registers_the_same_model(ffpp_run, ffpp, tmp_path):
    root = ffpp_run[0]
    cli_version = Registry(root/"registry.db").get("deepfake-detection", 1)
    out = tmp_path/"run_pipeline.ipynb"
    pm = [str(Path(sys.executable).parent/"papermill"), str(REPO/"nbs"/"run_pipeline.ipynb"), str(out), "--cwd", str(REPO),
          "-p", "target", "local", "-p", "local_root", str(root), "-p", "data", str(ffpp),
          "-y", json.dumps({"parameters": dict(a.split("=") for a in FFPP[1::2])})]
    proc = subprocess.run(pm, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    latest = Registry(root/"registry.db").resolve("deepfake-detection:latest")
    assert latest["version"] > cli_version["version"]
    assert latest["model_data"] == cli_version["model_data"] and latest["metrics"] == cli_version["metrics"]
    html = subprocess.run([sys.executable, str(REPO/"tools"/"render_docs.py"), "report", str(out)], capture_output=True, text=True)  # as `make run`
    assert html.returncode == 0, html.stderr
    page = out.with_suffix(".html").read_text()
    assert latest["ref"] in page and "PendingManualApproval" in page and "balanced_accuracy" in page and "<img" in page


def test_ffpp_pipeline_model_serves_with_nothing_else(ffpp_run, ffpp, tmp_path):
    # approve the version, then predict by registry reference with an empty weights cache: the artifact carries all it needs
    root = ffpp_run[0]
    assert run_cli("models", "approve", "deepfake-detection:1", "--root", root, "--note", "test").returncode == 0
    video = sorted(ffpp.rglob("*.mp4"))[0]
    proc = run_cli("predict", "deepfake-detection:latest-approved", video, "--root", root, "--json",
                   env={"DEEPFAKE_MLOPS_CACHE": str(tmp_path/"empty-cache")})
    assert proc.returncode == 0, describe(proc)
    answer = json.loads(proc.stdout)[0]
    assert answer["label"] in ("REAL", "FAKE") and answer["faces_found"] > 0 and answer["model_version"].startswith("Train-local-")
    assert not (tmp_path/"empty-cache").exists() or not any((tmp_path/"empty-cache").rglob("*.pt"))
