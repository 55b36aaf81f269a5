"`extract` killed part-way leaves a consistent folder, and the next run finishes the job without redoing work."
from __future__ import annotations
import json, os, shutil, signal, subprocess, sys, time
from pathlib import Path

import cv2
import pandas as pd
import pytest

from deepfake_mlops.data import crop_image
from deepfake_mlops.faces import LANDMARKS_FILE, read_index
from deepfake_mlops.shards import iter_shard, read_member
from deepfake_mlops.manifest import read_manifest
from helpers import cli_command, describe, read_csv_text, run_cli, temp_leftovers


def _parts(out:Path) -> list[Path]:
    "Finished part files (temporary ones start with a dot)."
    return sorted(p for p in (out/"parts").glob("*.csv") if not p.name.startswith(".")) if (out/"parts").is_dir() else []


def _crop_files(out:Path, video_id:str) -> set[str]:
    "The crops in a video's folder (its landmarks file beside them is not a crop)."
    return {p.relative_to(out).as_posix() for p in (out/"crops"/video_id).iterdir() if p.name != LANDMARKS_FILE}


def _kill_after_parts(command:list[str], out:Path, parts:int, log:Path) -> int:
    "Start `command`, SIGKILL it as soon as `parts` part files exist; returns its exit status."
    with open(log, "w") as f:
        proc = subprocess.Popen(command, stdout=f, stderr=subprocess.STDOUT)
        try:
            deadline = time.monotonic() + 300
            while proc.poll() is None and len(_parts(out)) < parts and time.monotonic() < deadline: time.sleep(0.005)
        finally:
            proc.kill()  # no-op when it has already exited
            proc.wait()
    return proc.returncode


def test_kill_and_resume(demo_clips, tmp_path):
    out, log = tmp_path/"faces", tmp_path/"first-run.log"
    ids = read_manifest(demo_clips)["video_id"].tolist()
    # one worker: videos are done one after another, so at most one is in flight when the kill lands
    status = _kill_after_parts(cli_command("extract", demo_clips, "--out", out, "--workers", 1), out, 2, log)
    assert status == -signal.SIGKILL, f"the run ended by itself (exit {status}) before it could be killed:\n{log.read_text()}"

    # what a kill leaves: every part file is complete and its crops folder holds exactly the crops it lists
    before = {p.stem: (p.stat().st_mtime_ns, p.read_bytes()) for p in _parts(out)}
    assert 2 <= len(before) < len(ids), f"{len(before)} of {len(ids)} videos done at the kill"
    crop_mtimes = {}
    for vid in before:
        crops = set(read_csv_text(out/"parts"/f"{vid}.csv")["crop_path"]) - {""}
        assert crops, f"{vid}: a demo clip with no crop"
        assert _crop_files(out, vid) == crops, f"{vid}: crops folder and part file disagree"
        assert all(cv2.imread(str(out/c)) is not None for c in crops), f"{vid}: unreadable crop"
        crop_mtimes.update({c: (out/c).stat().st_mtime_ns for c in crops})
    # a crops folder without its part file is the video in flight at the kill (its crops were moved into place,
    # its part not yet written): it counts as not done and is extracted again
    in_flight = {d.name for d in (out/"crops").iterdir() if not d.name.startswith(".")} - set(before)
    assert len(in_flight) <= 1, f"crops folders without a part file: {sorted(in_flight)}"
    assert not (out/"faces.csv").exists(), "the index is written once all videos are done"

    proc = run_cli("extract", demo_clips, "--out", out, "--workers", 1)
    assert proc.returncode == 0, describe(proc)
    summary = json.loads((out/"summary.json").read_text())
    assert summary["skipped"] == len(before) and summary["processed"] == len(ids) - len(before), summary
    assert summary["ok"] == len(ids) and summary["failed"] == 0, summary

    faces = read_csv_text(out/"faces.csv")
    assert set(faces["video_id"]) == set(ids), "faces.csv must have rows for every clip"
    for vid in ids:  # every crops folder, the one redone included, matches the index
        listed = set(faces.loc[(faces["video_id"] == vid) & (faces["crop_path"] != ""), "crop_path"])
        assert listed and _crop_files(out, vid) == listed, f"{vid}: crops folder and faces.csv disagree"
    after = {p.stem: (p.stat().st_mtime_ns, p.read_bytes()) for p in _parts(out)}
    assert {vid: after[vid] for vid in before} == before, "parts finished before the kill were rewritten"
    assert {c: (out/c).stat().st_mtime_ns for c in crop_mtimes} == crop_mtimes, "crops finished before the kill were rewritten"
    assert temp_leftovers(out/"crops") == [], "the half-written crops of the killed run must be cleared"


def _shard_members(shard:Path) -> dict[str, bytes]:
    return dict(iter_shard(shard))


def test_kill_mid_shard_and_resume(demo_clips, tmp_path):
    out, log = tmp_path/"faces", tmp_path/"first-run.log"
    ids = read_manifest(demo_clips)["video_id"].tolist()
    shards_layout = ["--layout", "shards", "--shard-mb", 1, "--workers", 1, "--no-contact-sheet"]  # about 3 clips a shard
    status = _kill_after_parts(cli_command("extract", demo_clips, "--out", out, *shards_layout), out, 1, log)
    assert status == -signal.SIGKILL, f"the run ended by itself (exit {status}) before it could be killed:\n{log.read_text()}"
    # what a kill leaves: finished shards, each whole, each with one part file that lists its videos
    finished = {p.name: (p.stat().st_mtime_ns, p.read_bytes()) for p in (out/"shards").glob("*.tar")}
    before = {p.name: p.read_bytes() for p in _parts(out)}
    assert sorted(before) == sorted(f"{name}.csv" for name in finished), (sorted(finished), sorted(before))
    listed = pd.concat([read_csv_text(out/"parts"/name) for name in before])
    done = set(listed["video_id"])
    assert finished and 1 <= len(done) < len(ids), (sorted(finished), len(done))
    crops = listed[listed["crop_path"] != ""]
    for shard, rows in crops.groupby("shard"):
        members = _shard_members(out/shard)
        assert set(rows["crop_path"]) == {m for m in members if not m.endswith(LANDMARKS_FILE)}, f"{shard}: members and parts disagree"
        for r in rows.itertuples():
            assert read_member(out/shard, int(float(r.offset)), int(float(r.size))) == members[r.crop_path]
    # the next run skips the finished videos, redoes the rest, and leaves the finished shards as they were
    proc = run_cli("extract", demo_clips, "--out", out, *shards_layout)
    assert proc.returncode == 0, describe(proc)
    summary = json.loads((out/"summary.json").read_text())
    assert summary["skipped"] == len(done) and summary["processed"] == len(ids) - len(done) and summary["ok"] == len(ids), summary
    assert {name: (p.stat().st_mtime_ns, p.read_bytes()) for name in finished for p in [out/"shards"/name]} == finished
    assert {p.name: p.read_bytes() for p in _parts(out) if p.name in before} == before
    assert temp_leftovers(out/"shards") == [], "the shard in flight at the kill must be cleared"
    index = read_index(out)
    index = index[index["crop_path"] != ""]
    assert set(index["video_id"]) == set(ids) and (index["shard_file"] != "").all() and (index["crop_file"] == "").all()
    per_shard = index.groupby("shard_file")["video_id"].nunique()
    assert len(per_shard) > len(finished) and (index.groupby("video_id")["shard_file"].nunique() == 1).all()  # a video in one shard
    assert all(crop_image(r).shape == (224, 224, 3) for _, r in index.sample(20, random_state=0).iterrows())


# a process killed inside `core.atomic_path`, as a SIGKILL of `extract` leaves it while it writes a part or the index
_KILLED_WRITER = """
import os, signal, sys
from pathlib import Path
from deepfake_mlops.core import atomic_path
out, video_id = Path(sys.argv[1]), sys.argv[2]
with atomic_path(out/"parts"/f"{video_id}.csv") as part, atomic_path(out/"faces.csv") as index:
    part.write_text("video_id\\n"); index.write_text("video_id\\n")
    os.kill(os.getpid(), signal.SIGKILL)
"""

def test_rerun_clears_temporary_files_of_a_killed_write(demo_clips, tmp_path):
    out = tmp_path/"faces"
    video_id = read_manifest(demo_clips)["video_id"].iloc[0]
    killed = subprocess.run([sys.executable, "-c", _KILLED_WRITER, str(out), video_id], capture_output=True, text=True)
    if killed.returncode != -signal.SIGKILL or not temp_leftovers(out):
        pytest.fail(f"the killed writer did not leave temporary files (exit {killed.returncode}): {killed.stderr}")
    proc = run_cli("extract", demo_clips, "--out", out, "--workers", 1)
    if proc.returncode != 0: pytest.fail(describe(proc))
    assert temp_leftovers(out) == []


def _files(out:Path) -> dict[str, tuple[int, bytes]]:
    "Every file under `out` with its modification time and content."
    return {p.relative_to(out).as_posix(): (p.stat().st_mtime_ns, p.read_bytes()) for p in sorted(out.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def refused_run(demo_clips, tmp_path_factory):
    "A finished extraction, then a run of another dataset with other settings into the same folder."
    base = tmp_path_factory.mktemp("refused")
    out, other = base/"faces", base/"other-data"
    proc = run_cli("extract", demo_clips, "--out", out, "--workers", 1)
    if proc.returncode != 0: pytest.fail(describe(proc))
    shutil.copytree(demo_clips, other)
    labels = read_csv_text(other/"labels.csv")
    labels.iloc[1:].to_csv(other/"labels.csv", index=False)  # another dataset: one clip fewer
    before = _files(out)
    refused = run_cli("extract", other, "--out", out, "--frames", 8, "--workers", 1)
    return out, before, refused, _files(out)


def test_rerun_with_other_settings_is_refused(refused_run):
    out, before, refused, after = refused_run
    assert refused.returncode == 2, describe(refused)
    assert str(out) in refused.stderr and "Traceback" not in refused.stderr, describe(refused)
    # manifest.csv: see test_refused_run_keeps_the_manifest
    changed = sorted(f for f in before.keys() | after.keys() if f != "manifest.csv" and before.get(f) != after.get(f))
    assert changed == [], f"a refused run changed {changed}"


def test_refused_run_keeps_the_manifest(refused_run):
    out, before, refused, after = refused_run
    assert refused.returncode == 2, describe(refused)
    assert after["manifest.csv"][1] == before["manifest.csv"][1], "manifest.csv no longer describes the crops in OUT"


def test_corrected_label_reaches_the_index(demo_clips, tmp_path):
    data, out = tmp_path/"data", tmp_path/"faces"
    shutil.copytree(demo_clips, data)
    if (proc := run_cli("extract", data, "--out", out, "--workers", 1)).returncode != 0: pytest.fail(describe(proc))
    labels = read_csv_text(data/"labels.csv")
    fixed = labels.index[labels["label"] == "REAL"][0]
    labels.loc[fixed, ["label", "method"]] = ["FAKE", "self-blend"]
    labels.to_csv(data/"labels.csv", index=False)
    video_id = read_manifest(data).set_index("relpath").loc[labels.loc[fixed, "path"], "video_id"]
    if (proc := run_cli("extract", data, "--out", out, "--workers", 1)).returncode != 0: pytest.fail(describe(proc))
    rows = read_csv_text(out/"faces.csv").query("video_id == @video_id")
    if rows.empty: pytest.fail(f"{video_id} missing from faces.csv")
    assert set(rows["label"]) == {"FAKE"} and set(rows["method"]) == {"self-blend"}, (
        f"faces.csv still has {sorted(set(rows['label']))} for {video_id}, labels.csv says FAKE")
