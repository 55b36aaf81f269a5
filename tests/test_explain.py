"Heat maps of what made a face look fake: from `predict --explain`, from the model server, and whether they follow the blend."
from __future__ import annotations
import base64, json, urllib.error, urllib.request
from pathlib import Path

import cv2
import numpy as np
import pytest

from helpers import describe, run_cli


def _call(url, body, kind="video/mp4"):
    req = urllib.request.Request(url, data=body, headers={"Content-Type": kind})
    try:
        with urllib.request.urlopen(req, timeout=300) as r: return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e: return e.code, json.loads(e.read())


def _most_suspicious(verdict, n) -> list[int]:
    "Frame indices of the `n` faces of highest fake probability, highest first (earlier frames first among equals)."
    return [f["index"] for f in sorted(verdict["frames"], key=lambda f: -f["probability"])[:n]]


def _png_side(data:bytes) -> tuple[int, int, int]:
    image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    assert image is not None, "not a decodable PNG"
    return image.shape


@pytest.fixture(scope="module")
def clip(demo_clips) -> Path:
    return sorted(demo_clips.glob("*/*.mp4"))[0]


def test_predict_explain_writes_the_most_suspicious_faces_as_png(demo_model, clip, tmp_path):
    _, tar = demo_model
    plain = run_cli("predict", tar, clip, "--json")
    explained = run_cli("predict", tar, clip, "--json", "--explain", tmp_path/"maps", "--explain-faces", 2)
    assert plain.returncode == 0 and explained.returncode == 0, describe(explained)
    plain, explained = json.loads(plain.stdout)[0], json.loads(explained.stdout)[0]
    maps = explained.pop("explanations")
    assert explained == plain  # asking for heat maps changes nothing of the verdict
    assert [m["index"] for m in maps] == _most_suspicious(plain, 2)
    for m in maps:
        path = Path(m["path"])
        assert path.parent.parent == tmp_path/"maps" and path.name == f"frame-{m['index']:06d}.png", path
        assert _png_side(path.read_bytes()) == (224, 224, 3)
        assert "png" not in m  # written to a file, not repeated inline
    table = run_cli("predict", tar, clip, "--explain", tmp_path/"again", "--explain-faces", 2)
    assert table.returncode == 0 and f"2 heat maps in {tmp_path/'again'}" in table.stdout, describe(table)
    assert len(list((tmp_path/"again").rglob("frame-*.png"))) == 2


def test_the_server_returns_heat_maps_when_asked_and_only_then(demo_model, start_server, clip):
    work, tar = demo_model
    url = start_server(tar, args=["--allow-paths", clip.parent])
    status, plain = _call(url + "/invocations", clip.read_bytes())
    assert status == 200 and "explanations" not in plain, plain
    status, answer = _call(url + "/invocations?explain=3", clip.read_bytes())
    assert status == 200, answer
    assert [e["index"] for e in answer["explanations"]] == _most_suspicious(plain, 3)
    for e in answer["explanations"]: assert _png_side(base64.b64decode(e["png"])) == (224, 224, 3)
    # a JSON request asks in its own field
    status, named = _call(url + "/invocations", json.dumps({"path": clip.name, "explain": 1}).encode(), "application/json")
    assert status == 200 and [e["index"] for e in named["explanations"]] == _most_suspicious(plain, 1), named
    from deepfake_mlops.core import MAX_EXPLAIN
    for query in (f"explain={MAX_EXPLAIN + 1}", "explain=-1", "explain=two"):
        status, refused = _call(url + f"/invocations?{query}", clip.read_bytes())
        assert status == 400 and f"from 0 to {MAX_EXPLAIN}" in refused["error"], (query, refused)
    status, refused = _call(url + "/invocations", json.dumps({"path": clip.name, "explain": True}).encode(), "application/json")
    assert status == 400 and '"explain"' in refused["error"], refused


@pytest.fixture(scope="module")
def sbi_model(ffpp_faces, tmp_path_factory):
    "A model trained on self-blends of the FF++ sample's real faces only: (its folder, the extraction it was trained on)."
    model = tmp_path_factory.mktemp("sbi")/"model"
    proc = run_cli("train", ffpp_faces, "--out", model, "--blend", "sbi", "--epochs", 4, "--patience", 4,
                   "--crops-per-video", 8, "--workers", 2, timeout=1200)
    assert proc.returncode == 0, describe(proc)
    return model, ffpp_faces


def test_heat_maps_follow_the_blend_better_than_maps_that_do_not_know_it(sbi_model):
    from deepfake_mlops.data import crop_image, read_crops, read_split
    from deepfake_mlops.explain import Explainer, blend_mass
    from deepfake_mlops.model import load_model
    model, faces = sbi_model
    crops = read_crops(faces, read_split(model/"split.csv"))
    # a fixed set the model never trained on: every real crop of the validation and test videos
    held_out = crops[(crops["label"] == "REAL") & crops["split"].isin(["val", "test"])].sort_values(["video_id", "frame_index"])
    assert len(held_out) >= 24, len(held_out)
    table = blend_mass(Explainer(load_model(model)), [crop_image(r) for _, r in held_out.iterrows()],
                       list(held_out["landmarks"]), seed=0)
    means = table.mean()
    # the map of another face blended on its other half, and this face's map before the blend (nbs/11a_explain)
    assert means["heat_map"] > means["shuffled"] and means["heat_map"] > means["unblended"], means.to_dict()
