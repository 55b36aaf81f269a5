"The HTTP server on the SageMaker contract, run as a user runs it: `deepfake-mlops serve model.tar.gz`."
from __future__ import annotations
import json, urllib.error, urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from helpers import run_cli


def _call(url, body=None, kind="video/mp4"):
    req = urllib.request.Request(url, data=body, headers={"Content-Type": kind} if body is not None else {})
    try:
        with urllib.request.urlopen(req, timeout=300) as r: return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e: return e.code, json.loads(e.read())


def test_verdicts_over_http_equal_predict(demo_server, demo_clips):
    url, tar = demo_server
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


def test_bad_requests_get_4xx_and_the_server_keeps_serving(demo_server, tmp_path):
    url, _ = demo_server
    import cv2, numpy as np
    blank = cv2.imencode(".png", np.zeros((64, 64, 3), np.uint8))[1].tobytes()
    cases = [(b"", "video/mp4", 422), (b"not a video", "video/mp4", 422), (b"not an image", "image/jpeg", 422),
             (blank, "image/png", 422), (b"a,b", "text/csv", 415), (b"{", "application/json", 400),
             # local files are off by default: the same 403 whether or not the file exists
             (json.dumps({"path": str(tmp_path/"missing.mp4")}).encode(), "application/json", 403),
             (json.dumps({"path": __file__}).encode(), "application/json", 403)]
    for body, kind, status in cases:
        got, answer = _call(url + "/invocations", body, kind)
        assert got == status and "error" in answer, (kind, body[:20], got, answer)
    assert _call(url + "/ping") == (200, {"status": "healthy"})
    assert _call(url + "/nowhere")[0] == 404


def _plain_verdict(model_dir, video):
    "Fake probability per frame computed step by step, with none of the serving speed-ups (threads, chunks, fused layers)."
    import torch
    from deepfake_mlops.blazeface import FaceDetector
    from deepfake_mlops.core import DEFAULTS
    from deepfake_mlops.faces import as_stored, crop_square, link_tracks, main_track
    from deepfake_mlops.model import crops_to_tensor, load_model
    from deepfake_mlops.video import sample_frames
    model = load_model(model_dir)
    cfg = model.config
    frames = sample_frames(video, cfg.get("frames_per_video", DEFAULTS.frames_per_video))
    dets = FaceDetector(cfg.get("detector", DEFAULTS.detector))([f.image for f in frames])
    ids = link_tracks(dets); main = main_track(dets, ids)
    kept = [(f, d[np.flatnonzero(i == main)[0]]) for f, d, i in zip(frames, dets, ids) if (i == main).any()]
    crops = [as_stored(crop_square(f.image, box[:4], cfg.get("face_size", DEFAULTS.face_size),
                                  cfg.get("margin", DEFAULTS.face_margin))) for f, box in kept]
    with torch.inference_mode(): probs = model.probability(model(crops_to_tensor(crops, model.mean, model.std))).numpy()  # calibrated
    return [f.index for f, _ in kept], probs


def test_served_verdicts_equal_the_plain_computation_on_real_videos(demo_server, demo_model, ffpp):
    url, _ = demo_server
    work, _ = demo_model
    videos = sorted(ffpp.rglob("*.mp4"))[::20][:3]  # a 1080p actor scene, two 720p manipulations
    for video in videos:
        status, answer = _call(url + "/invocations", video.read_bytes())
        assert status == 200, (video, answer)
        indices, probs = _plain_verdict(work/"model", video)
        assert [f["index"] for f in answer["frames"]] == indices, video
        assert np.abs(np.array([f["probability"] for f in answer["frames"]]) - probs).max() < 1e-4, video
        assert abs(answer["probability"] - probs.mean()) < 1e-4, video
