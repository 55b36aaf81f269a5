"A killed or interrupted `extract` or `run` leaves no process of its own behind, and a killed run resumes Train."
from __future__ import annotations
import json, os, signal, sqlite3, subprocess, time
from pathlib import Path

import psutil
import pytest

from helpers import cli_command, describe, run_cli


def _parts(out:Path) -> int:
    "Finished part files of an extraction folder (temporary ones start with a dot)."
    return len([p for p in (out/"parts").glob("*.csv") if not p.name.startswith(".")]) if (out/"parts").is_dir() else 0


def _start(args:list, log:Path) -> subprocess.Popen:
    "`deepfake-mlops ARGS` in a process group of its own (its id is the group's), output to `log`."
    with open(log, "w") as f:
        # Ctrl-C as a terminal's foreground job gets it: a shell that started this run in the background made it ignore SIGINT
        return subprocess.Popen(cli_command(*args), stdout=f, stderr=subprocess.STDOUT, start_new_session=True,
                                preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))


def _wait_for(condition, proc:subprocess.Popen, log:Path, timeout:float=300):
    deadline = time.monotonic() + timeout
    while not condition():
        if proc.poll() is not None:
            pytest.fail(f"the command ended (exit {proc.returncode}) before the kill:\n{log.read_text()[-3000:]}")
        if time.monotonic() > deadline: pytest.fail(f"nothing to kill after {timeout} s:\n{log.read_text()[-3000:]}")
        time.sleep(0.05)


def _running(p:psutil.Process) -> bool:
    try: return p.is_running() and p.status() != psutil.STATUS_ZOMBIE
    except psutil.Error: return False


def _theirs(pid:int, marker:str, family:list[psutil.Process]) -> dict[int, str]:
    "Live processes of the killed command: its children, its process group, and any naming the test's folder."
    me = os.getpid()
    out = {p.pid: p for p in family if _running(p)}
    for p in psutil.process_iter(["pid", "cmdline"]):
        if p.pid == me or not _running(p): continue
        try: group = os.getpgid(p.pid)
        except OSError: continue
        if group == pid or any(marker in a for a in p.info["cmdline"] or []): out[p.pid] = p
    return out


def _cmdline(p:psutil.Process) -> str:
    try: return " ".join(p.cmdline())[:120]
    except psutil.Error: return "(gone)"


def _kill_and_check(proc:subprocess.Popen, sig:int, marker:str, within:float=10) -> list[str]:
    "Send `sig` to the command's own process (not its group); its processes still running `within` seconds later."
    family = psutil.Process(proc.pid).children(recursive=True)
    assert family, "the command had started no worker or job process: the test would prove nothing"
    os.kill(proc.pid, sig)
    proc.wait(30)
    deadline = time.monotonic() + within
    while (left := _theirs(proc.pid, marker, family)) and time.monotonic() < deadline: time.sleep(0.2)
    described = [f"{pid} {_cmdline(p)}" for pid, p in left.items()]
    for p in left.values(): p.kill()  # leave the machine clean for the next test, then fail
    return described


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM], ids=["SIGKILL", "SIGTERM"])
def test_a_killed_extract_leaves_no_worker_running(demo_clips, tmp_path, sig):
    out, log = tmp_path/"faces", tmp_path/"extract.log"
    proc = _start(["extract", demo_clips, "--out", out, "--frames", 8, "--workers", 2, "--no-contact-sheet"], log)
    _wait_for(lambda: _parts(out) >= 1, proc, log)  # the workers are busy: one video is done
    assert _kill_and_check(proc, sig, str(tmp_path)) == []


def test_ctrl_c_stops_extract_at_once_with_one_line_and_no_worker_left(demo_clips, tmp_path):
    out, log = tmp_path/"faces", tmp_path/"extract.log"
    # 40 frames a video: once the workers are up a demo clip takes a tenth of a second at 8 frames, and all 12
    # could be done before the Ctrl-C lands
    proc = _start(["extract", demo_clips, "--out", out, "--frames", 40, "--workers", 2, "--no-contact-sheet"], log)
    _wait_for(lambda: _parts(out) >= 1, proc, log)
    family = psutil.Process(proc.pid).children(recursive=True)
    os.killpg(proc.pid, signal.SIGINT)  # as a terminal sends Ctrl-C: to the whole foreground group
    t0 = time.monotonic()
    proc.wait(30)
    stopped_s = time.monotonic() - t0
    deadline = time.monotonic() + 5
    while (left := _theirs(proc.pid, str(tmp_path), family)) and time.monotonic() < deadline: time.sleep(0.2)
    for p in left.values(): p.kill()
    left = [_cmdline(p) for p in left.values()]
    text = log.read_text()
    assert stopped_s < 5, f"took {stopped_s:.1f} s to stop"
    assert left == [], f"processes left running: {left}"
    line = text.strip().splitlines()[-1]
    finished = _parts(out)
    expected = f"interrupted: {finished} of 12 videos finished in {out}; run the same command again to resume"
    assert expected in line, text[-3000:]  # the rerun skips finished videos: tests/test_resume.py
    # that line alone, and the shell's status for Ctrl-C (`cli.main` turns the KeyboardInterrupt into both)
    assert "Traceback" not in text and proc.returncode == 130, f"exit {proc.returncode}:\n{text[-3000:]}"


# a run whose Train step has an epoch to resume: 2 short epochs on the demo clips
RESUMABLE = ["--param", "FramesPerVideo=8", "--param", "Epochs=2", "--param", "BatchSize=16", "--param", "MinAuc=0"]


def _steps(root:Path, execution:str) -> dict:
    with sqlite3.connect(root/"engine.db") as db:
        return dict(db.execute("SELECT name, status FROM steps WHERE execution_id=?", (execution,)).fetchall())


def _execution(root:Path) -> str|None:
    "The latest execution's id."
    if not (root/"engine.db").exists(): return None
    with sqlite3.connect(root/"engine.db") as db:
        row = db.execute("SELECT id FROM executions ORDER BY started DESC, rowid DESC LIMIT 1").fetchone()
    return row and row[0]


def _ml(root:Path, execution:str, step:str) -> Path:
    "A job's /opt/ml on this machine."
    return root/"executions"/execution/step/"algo-1"/"opt"/"ml"


def _started(root:Path, step:str) -> bool:
    "Whether the latest execution's `step` is far enough to be worth killing: a video extracted, an epoch checkpointed."
    if not (e := _execution(root)): return False
    if step == "Train": return (_ml(root, e, "Train")/"checkpoints"/"last.pt").exists()
    return any((_ml(root, e, "Preprocess")/"processing"/"output").rglob("parts/*.csv"))


@pytest.mark.parametrize("sig,step", [(signal.SIGKILL, "Train"), (signal.SIGTERM, "Preprocess")], ids=["SIGKILL", "SIGTERM"])
def test_a_killed_run_is_marked_failed_and_the_next_one_resumes_from_finished_steps(demo_clips, tmp_path, sig, step):
    root, log = tmp_path/"engine", tmp_path/"run.log"
    proc = _start(["run", "--root", root, "--data", demo_clips, *RESUMABLE], log)
    _wait_for(lambda: _started(root, step), proc, log, timeout=600)
    execution = _execution(root)
    assert _steps(root, execution).get(step) == "Executing"
    # the run's own process only, as `kill PID` or an out-of-memory kill does: its jobs and their workers must die with it
    assert _kill_and_check(proc, sig, str(tmp_path)) == []
    # `executions show` notices the dead run by itself, as `executions list` does
    shown = run_cli("executions", "show", execution, "--root", root)
    assert f"{execution}: Failed interrupted" in shown.stdout, describe(shown)
    listed = run_cli("executions", "list", "--root", root)
    assert execution in listed.stdout and "Failed" in listed.stdout and "interrupted" in listed.stdout, describe(listed)
    if step != "Train": return  # a killed Preprocess is simply run again (tests/test_resume.py)
    import torch
    checkpoint = torch.load(_ml(root, execution, "Train")/"checkpoints"/"last.pt", map_location="cpu", weights_only=True)
    done_before = checkpoint["epoch"] + 1
    again = run_cli("run", "--root", root, "--data", demo_clips, *RESUMABLE)
    assert again.returncode == 0, describe(again)
    assert "Preprocess: cached" in again.stdout and "Train: done" in again.stdout, describe(again)
    # Train went on from the dead run's checkpoint: only the epoch left was trained
    assert f"after epoch {done_before}" in again.stdout, describe(again)
    summary = json.loads((_ml(root, _execution(root), "Train")/"model"/"train.json").read_text())
    assert (summary["epochs_run"], summary["epochs_trained"]) == (2, 2 - done_before) and done_before == 1, summary
