"`deepfake-mlops serve` against a hostile client on 127.0.0.1: raw requests no HTTP library would send, slow and idle connections, too many of them, JSON naming files and buckets, and a soak of mixed traffic."
from __future__ import annotations
import json, random, select, shutil, socket, threading, time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import cv2
import numpy as np
import pytest

from deepfake_mlops.video import sample_frames

READ_TIMEOUT = 1.0  # seconds: slow clients are cut off quickly
MAX_CONNECTIONS = 12
MAX_BODY = 2_000_000
ALLOWED_S3 = "s3://allowed-bucket/videos/"


@pytest.fixture(scope="module")
def server(demo_model, demo_clips, start_server, tmp_path_factory) -> dict:
    "The demo model.tar.gz served with small limits, a folder JSON requests may name, an S3 prefix and its own TMPDIR."
    work, tar = demo_model
    root = tmp_path_factory.mktemp("hardened")
    allowed, tmp = root/"allowed", root/"tmp"
    allowed.mkdir(); tmp.mkdir()
    clip = sorted(demo_clips.glob("*/*.mp4"))[0]
    shutil.copy(clip, allowed/"clip.mp4")
    (allowed/"escape.mp4").symlink_to(clip)  # a link inside the folder to a file outside it
    # S3 points at a closed loopback port, so a fetch fails at once and reaches nothing outside
    env = {"DEEPFAKE_MLOPS_READ_TIMEOUT": str(READ_TIMEOUT), "DEEPFAKE_MLOPS_MAX_CONNECTIONS": str(MAX_CONNECTIONS),
           "DEEPFAKE_MLOPS_MAX_BODY": str(MAX_BODY), "TMPDIR": str(tmp), "AWS_ENDPOINT_URL": "http://127.0.0.1:9",
           "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "eu-west-1",
           "AWS_MAX_ATTEMPTS": "1", "AWS_EC2_METADATA_DISABLED": "true", "NO_PROXY": "127.0.0.1"}
    url = start_server(tar, env=env, args=["--allow-paths", allowed, "--allow-s3", ALLOWED_S3])
    return dict(url=url, port=int(url.rsplit(":", 1)[1]), pid=start_server.procs[url].pid, allowed=allowed, tmp=tmp, clip=clip)


def raw(port:int, data:bytes, timeout:float=10) -> tuple[int|None, dict|str|None, float]:
    "Send `data` as it is on a new connection; (status, JSON answer, seconds) once the server closes, status None if it answered nothing."
    started, got = time.monotonic(), b""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        if data: s.sendall(data)
        try:
            while chunk := s.recv(1 << 16): got += chunk
        except ConnectionResetError: pass
    seconds = time.monotonic() - started
    if not got: return None, None, seconds
    head, _, body = got.partition(b"\r\n\r\n")
    try: answer = json.loads(body)
    except ValueError: answer = body.decode(errors="replace")
    return int(head.split()[1]), answer, seconds


def post(body:bytes=b"", kind:str="video/mp4", length:str|None=None, extra:str="") -> bytes:
    "A raw POST /invocations; `length` is the Content-Length header as sent (None: the body's size, '' for none)."
    length = str(len(body)) if length is None else length
    head = f"POST /invocations HTTP/1.1\r\nHost: x\r\nContent-Type: {kind}\r\n" + (f"Content-Length: {length}\r\n" if length else "")
    return (head + extra + "\r\n").encode() + body


PING = b"GET /ping HTTP/1.1\r\nHost: x\r\n\r\n"


def leftovers(tmp:Path) -> list[str]:
    "Request bodies kept as temporary files (*.video) and unpacked models (deepfake-model-*) under the server's TMPDIR."
    return sorted(p.name for p in tmp.iterdir() if p.suffix == ".video" or p.name.startswith("deepfake-model-"))


def no_server_paths(answer) -> bool:
    text = json.dumps(answer)
    return ".video" not in text and "/tmp" not in text and "Traceback" not in text


@pytest.mark.parametrize("request_bytes, status", [
    (post(b"junk", length="-1"), 400), (post(b"junk", length="abc"), 400), (post(b"junk", length="+4"), 400),
    (post(b"junk", extra="Content-Length: 5\r\n"), 400),  # two lengths that disagree
    (post(b"junk", length=""), 411), (post(b"4\r\njunk\r\n0\r\n\r\n", length="", extra="Transfer-Encoding: chunked\r\n"), 411),
    (post(length=str(10**12)), 413)], ids=["minus-one", "abc", "plus", "two-lengths", "missing", "chunked", "huge"])
def test_a_body_without_a_plain_length_is_refused_before_it_is_read(server, request_bytes, status):
    got, answer, seconds = raw(server["port"], request_bytes)
    assert got == status, (got, answer)
    assert seconds < READ_TIMEOUT, f"answered after {seconds:.1f} s: the server waited for a body it should not read"
    assert no_server_paths(answer) and "error" in answer, answer


def test_slow_and_idle_clients_are_cut_off(server):
    port = server["port"]
    # headers, then 3 of 1,500,000 promised bytes, then nothing
    got, answer, seconds = raw(port, post(b"abc", length="1500000"))
    assert got == 408 and "too slowly" in answer["error"] and seconds < READ_TIMEOUT + 2, (got, answer, seconds)
    got, _, seconds = raw(port, b"")  # connects and sends nothing
    assert got is None and seconds < READ_TIMEOUT + 2, seconds
    # a byte every half second never hits the read timeout, but the body's deadline (timeout + size / 64 KiB/s)
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(post(length="20000"))
        started, answer = time.monotonic(), b""
        while not answer and time.monotonic() - started < 10:
            s.sendall(b"x")
            if select.select([s], [], [], 0.5)[0]: answer = s.recv(1 << 16)
        seconds = time.monotonic() - started
    assert answer.startswith(b"HTTP/1.0 408") and seconds < READ_TIMEOUT + 20000 / 65536 + 1.5, (answer[:100], seconds)


def test_connections_past_the_bound_get_a_quick_503(server):
    port = server["port"]
    idle = [socket.create_connection(("127.0.0.1", port)) for _ in range(MAX_CONNECTIONS)]
    try:
        time.sleep(0.2)  # all accepted, each holding a slot while it waits for a request
        got, answer, seconds = raw(port, PING)
        assert got == 503 and "busy" in answer["error"] and seconds < 0.5, (got, answer, seconds)
    finally:
        for s in idle: s.close()
    deadline = time.monotonic() + 3
    while (got := raw(port, PING)[0]) != 200 and time.monotonic() < deadline: time.sleep(0.05)
    assert got == 200, "closed connections must give their slots back"


def _json(port, request) -> tuple:
    status, answer, _ = raw(port, post(json.dumps(request).encode(), "application/json"))
    return status, answer


def test_json_requests_reach_only_what_the_operator_allows(server, demo_server):
    default = int(demo_server[0].rsplit(":", 1)[1])
    # by default nothing: the same 403 whether or not the file exists
    assert _json(default, {"path": str(server["clip"])}) == _json(default, {"path": "/no/such/file.mp4"})
    assert _json(default, {"path": str(server["clip"])})[0] == 403
    assert _json(default, {"s3_uri": "s3://any-bucket/video.mp4"})[0] == 403
    port = server["port"]
    status, answer = _json(port, {"path": "clip.mp4"})
    assert status == 200 and answer["faces_found"] > 0, answer
    for outside in ["../" * 8 + "etc/passwd", "/etc/passwd", "escape.mp4", str(server["clip"])]:
        assert _json(port, {"path": outside})[0] == 403, outside
    assert _json(port, {"path": "missing.mp4"})[0] == 404
    for bad in [{"path": 123}, {"path": ["a"]}, {"s3_uri": "s3://bucket"}, ["a"], {"file": "clip.mp4"}]:
        status, answer = _json(port, bad)
        assert status == 400 and no_server_paths(answer), (bad, status, answer)
    assert _json(port, {"s3_uri": "s3://another-bucket/videos/x.mp4"})[0] == 403
    status, answer = _json(port, {"s3_uri": ALLOWED_S3 + "x.mp4"})  # allowed, but S3 cannot be reached
    assert status == 502 and "could not be fetched" in answer["error"], answer
    assert leftovers(server["tmp"]) == [], "a failed fetch must leave no temporary file"


def test_answers_name_no_server_file_and_no_unpacked_model_is_left(server, demo_model):
    port = server["port"]
    for body in [b"", b"not a video"]:
        status, answer, _ = raw(port, post(body))
        assert status == 422 and answer["error"].startswith("the request body: ") and no_server_paths(answer), answer
    assert leftovers(server["tmp"]) == [], "serve must not keep the unpacked model.tar.gz"


def _rss(pid:int) -> int:
    "Resident memory of a process in kB, from /proc."
    status = Path(f"/proc/{pid}/status").read_text()
    return int(next(line.split()[1] for line in status.splitlines() if line.startswith("VmRSS:")))


def _soak_cases(server, demo_clips) -> dict:
    "Request kind -> (raw request, expected status (None: closed without an answer), how many of the 1,000)."
    clips = sorted(demo_clips.glob("*/*.mp4"))
    frame = cv2.cvtColor(sample_frames(clips[0], 1)[0].image, cv2.COLOR_RGB2BGR)
    face = cv2.imencode(".jpg", frame)[1].tobytes()
    blank = cv2.imencode(".png", np.zeros((64, 64, 3), np.uint8))[1].tobytes()
    junk = np.random.default_rng(0).integers(0, 256, 4000, dtype=np.uint8).tobytes()
    return {
        "ping": (PING, 200, 300), "garbage video": (post(junk), 422, 150), "faceless image": (post(blank, "image/png"), 422, 100),
        "garbage image": (post(junk, "image/jpeg"), 422, 44), "csv": (post(b"a,b", "text/csv"), 415, 60),
        "bad json": (post(b"{", "application/json"), 400, 40),
        "outside path": (post(b'{"path": "/etc/passwd"}', "application/json"), 403, 40),
        "length -1": (post(b"junk", length="-1"), 400, 40), "length abc": (post(b"junk", length="abc"), 400, 30),
        "no length": (post(b"junk", length=""), 411, 30),
        "chunked": (post(b"4\r\njunk\r\n0\r\n\r\n", length="", extra="Transfer-Encoding: chunked\r\n"), 411, 30),
        "huge": (post(length=str(10**12)), 413, 30), "oversize": (post(b"x" * (MAX_BODY + 500_000)), 413, 10),
        "slow": (post(b"abc", length="1000"), 408, 16), "idle": (b"", None, 16),
        "face image": (post(face, "image/jpeg"), 200, 40),
        **{f"video {i}": (post(c.read_bytes()), 200, 3) for i, c in enumerate(clips[:8])},
    }


def test_soak_of_mixed_requests_from_8_clients(server, demo_clips):
    cases = _soak_cases(server, demo_clips)
    plan = [kind for kind, (_, _, n) in cases.items() for _ in range(n)]
    assert len(plan) == 1000
    random.Random(0).shuffle(plan)
    port, pid = server["port"], server["pid"]
    for kind in ("video 0", "face image", "garbage video", "oversize"): raw(port, cases[kind][0])  # warm up the model and buffers
    before = _rss(pid)
    pings, stop = [], threading.Event()
    def watch():  # /ping from a ninth client, all along
        while not stop.is_set():
            pings.append(raw(port, PING, timeout=5)[0]); time.sleep(0.1)
    watcher = threading.Thread(target=watch); watcher.start()
    try:
        with ThreadPoolExecutor(8) as pool: answers = list(pool.map(lambda kind: (kind, raw(port, cases[kind][0])), plan))
    finally:
        stop.set(); watcher.join()
    after = _rss(pid)
    wrong = [(kind, status, answer) for kind, (status, answer, _) in answers if status != cases[kind][1]]
    assert wrong == [], f"{len(wrong)} answers other than expected, e.g. {wrong[:5]}"
    assert pings and set(pings) == {200}, f"/ping answered {sorted(set(map(str, pings)))}"
    assert after <= before * 1.2, f"server memory grew from {before} kB to {after} kB"
    assert leftovers(server["tmp"]) == [], "temporary files left behind"
