"The deployment loop on this machine, as a user runs it: approve (and deploy staging), test, promote, roll back, stop."
from __future__ import annotations
import json, os, shutil, socket
from pathlib import Path

import pytest

from deepfake_mlops.deploy import STAGES
from deepfake_mlops.registry import Registry

from helpers import describe, run_cli

GROUP = "deepfake-detection"


def _free(port:int) -> bool:
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try: s.bind(("127.0.0.1", port)); return True
        except OSError: return False


@pytest.fixture
def registry_root(demo_model, tmp_path):
    "A local engine folder whose registry holds the demo model twice (versions 1 and 2), pending approval; endpoints stopped after."
    _, tar = demo_model
    root = tmp_path/"local"; root.mkdir()
    registry = Registry(root/"registry.db")
    for v in (1, 2):
        copy = tmp_path/f"model-{v}.tar.gz"; shutil.copy(tar, copy)
        registry.register(GROUP, str(copy), {"auc": 1.0}, {"source": "demo clips"})
    yield root
    run_cli("endpoints", "stop", "--root", root)


def _state(root, stage) -> dict:
    return json.loads((root/"endpoints"/f"{stage}.json").read_text())


def _alive(pid) -> bool:
    try: os.kill(pid, 0); return Path(f"/proc/{pid}").exists() and "Z" not in Path(f"/proc/{pid}/stat").read_text().split()[2]
    except ProcessLookupError: return False


def test_approve_deploys_staging_test_promote_rollback_stop(registry_root, demo_clips, free_port):
    root = registry_root
    staging_port = STAGES["staging"]["local_port"]
    if not _free(staging_port): pytest.skip(f"port {staging_port} (staging's local_port) is in use on this machine")
    sample = sorted(demo_clips.rglob("*.mp4"))[-1]

    proc = run_cli("models", "approve", f"{GROUP}:1", "--deploy", "--root", root)
    assert proc.returncode == 0, describe(proc)
    staging = _state(root, "staging")
    assert staging["version"] == 1 and staging["url"] == f"http://127.0.0.1:{staging_port}"

    proc = run_cli("endpoints", "promote", "--root", root)
    assert proc.returncode == 2 and "has not been tested" in proc.stderr, describe(proc)  # the gate: test first

    proc = run_cli("endpoints", "test", "--stage", "staging", "--video", sample, "--root", root)
    assert proc.returncode == 0 and "every answer is right" in proc.stdout, describe(proc)
    assert json.loads((root/"endpoints"/"staging-test.json").read_text())["version"] == 1

    prod_port = free_port()
    proc = run_cli("endpoints", "promote", "--port", prod_port, "--root", root)
    assert proc.returncode == 0, describe(proc)
    prod = _state(root, "prod")
    assert prod["version"] == 1 and prod["settings"] == STAGES["prod"]
    cmdline = Path(f"/proc/{prod['pid']}/cmdline").read_bytes().split(b"\0")
    assert cmdline[cmdline.index(b"--max-connections") + 1] == str(STAGES["prod"]["local_max_connections"]).encode()

    # version 2: approving it deploys it to staging; prod keeps version 1 until it is tested and promoted
    proc = run_cli("models", "approve", f"{GROUP}:2", "--deploy", "--root", root)
    assert proc.returncode == 0 and _state(root, "staging")["version"] == 2 and _state(root, "prod")["version"] == 1, describe(proc)
    assert not _alive(staging["pid"])  # the endpoint version 2 replaced is gone
    proc = run_cli("endpoints", "promote", "--port", prod_port, "--root", root)
    assert proc.returncode == 2 and "has not been tested" in proc.stderr, describe(proc)
    assert run_cli("endpoints", "test", "--stage", "staging", "--video", sample, "--root", root).returncode == 0
    assert run_cli("endpoints", "promote", "--port", prod_port, "--root", root).returncode == 0
    assert _state(root, "prod")["version"] == 2

    proc = run_cli("endpoints", "rollback", "--stage", "prod", "--root", root)
    assert proc.returncode == 0 and _state(root, "prod")["version"] == 1 and _state(root, "prod")["port"] == prod_port, describe(proc)
    proc = run_cli("endpoints", "rollback", "--stage", "prod", "--root", root)
    assert proc.returncode == 2 and "nothing to roll back to" in proc.stderr, describe(proc)

    proc = run_cli("endpoints", "list", "--root", root)
    assert f"staging: {GROUP}:2" in proc.stdout and f"prod: {GROUP}:1" in proc.stdout and "NOT" not in proc.stdout, describe(proc)
    pids = [_state(root, s)["pid"] for s in STAGES]
    proc = run_cli("endpoints", "stop", "--root", root)
    assert proc.returncode == 0 and not any(_alive(p) for p in pids), describe(proc)
    assert not (root/"endpoints"/"staging.json").exists()


def test_nothing_approved_is_one_line(registry_root):
    proc = run_cli("endpoints", "deploy", "--stage", "staging", "--root", registry_root)
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1 and "has no Approved version" in proc.stderr, describe(proc)
    proc = run_cli("endpoints", "deploy", "--version", "7", "--root", registry_root)
    assert proc.returncode == 2 and "7" in proc.stderr and "Traceback" not in proc.stderr, describe(proc)
