"The HTTP server on the SageMaker contract, run as a user runs it: `deepfake-mlops serve model.tar.gz`."
from __future__ import annotations
import json, socket, subprocess, time, urllib.error, urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from helpers import cli_command, describe, run_cli


def _free_port():
    with socket.socket() as s: s.bind(("127.0.0.1", 0)); return s.getsockname()[1]


def _call(url, body=None, kind="video/mp4"):
    req = urllib.request.Request(url, data=body, headers={"Content-Type": kind} if body is not None else {})
    try:
        with urllib.request.urlopen(req, timeout=300) as r: return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e: return e.code, json.loads(e.read())


@pytest.fixture(scope="module")
def server(demo_model):
    work, tar = demo_model
    port = _free_port()
    proc = subprocess.Popen(cli_command("serve", tar, "--port", port), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 120
    while time.time() < deadline:
        try:
            if _call(url + "/ping")[0] == 200: break
        except (urllib.error.URLError, ConnectionError): time.sleep(0.3)
        assert proc.poll() is None, proc.stdout.read()
    yield url, tar
    proc.terminate(); proc.wait(10)


def test_verdicts_over_http_equal_predict(server, demo_clips):
    url, tar = server
    clips = sorted(demo_clips.glob("*/*.mp4"))[:4]
    expected = {Path(a["video"]).name: a for a in json.loads(run_cli("predict", tar, *clips, "--json").stdout)}
    # four clients at once
    with ThreadPoolExecutor(4) as pool:
        answers = list(pool.map(lambda c: (c.name, _call(url + "/invocations", c.read_bytes())), clips))
    for name, (status, answer) in answers:
        assert status == 200, answer
        assert answer["label"] == expected[name]["label"]
        assert abs(answer["probability"] - expected[name]["probability"]) < 1e-4
        assert [f["index"] for f in answer["frames"]] == [f["index"] for f in expected[name]["frames"]]


def test_bad_requests_get_4xx_and_the_server_keeps_serving(server, tmp_path):
    url, _ = server
    import cv2, numpy as np
    blank = cv2.imencode(".png", np.zeros((64, 64, 3), np.uint8))[1].tobytes()
    cases = [(b"", "video/mp4", 422), (b"not a video", "video/mp4", 422), (b"not an image", "image/jpeg", 422),
             (blank, "image/png", 422), (b"a,b", "text/csv", 415), (b"{", "application/json", 400),
             (json.dumps({"path": str(tmp_path/"missing.mp4")}).encode(), "application/json", 404)]
    for body, kind, status in cases:
        got, answer = _call(url + "/invocations", body, kind)
        assert got == status and "error" in answer, (kind, body[:20], got, answer)
    assert _call(url + "/ping") == (200, {"status": "healthy"})
    assert _call(url + "/nowhere")[0] == 404
