"Serving the trained model: model.tar.gz is self-contained and gives the same scores as the evaluation."
from __future__ import annotations
import io, json, sys, subprocess, tarfile
from pathlib import Path

import pandas as pd
import pytest

from helpers import describe, run_cli


def test_packaged_model_serves_alone_and_matches_the_evaluation(demo_model, datasets, tmp_path):
    work, tar = demo_model
    dfdc = datasets/"dfdc"
    proc = run_cli("evaluate", work/"model", dfdc, "--out", tmp_path/"eval")
    assert proc.returncode == 0, describe(proc)
    evaluated = pd.read_csv(tmp_path/"eval"/"videos.csv").set_index("video_id")["prob"]
    videos = sorted(dfdc.glob("*/*.mp4"))
    # an empty weights cache: the archive must carry the face detector itself
    empty = tmp_path/"empty-cache"; empty.mkdir()
    proc = run_cli("predict", tar, *videos, "--json", env={"DEEPFAKE_MLOPS_CACHE": str(empty)})
    assert proc.returncode == 0, describe(proc)
    answers = json.loads(proc.stdout)
    assert [a["model_version"] for a in answers] == ["test-1"] * len(videos)
    for a in answers:
        vid = str(Path(a["video"]).relative_to(dfdc).with_suffix("")).replace("/", "__")
        assert abs(a["probability"] - evaluated[vid]) < 1e-3, (vid, a["probability"], evaluated[vid])
        assert a["label"] == ("FAKE" if a["probability"] >= a["threshold"] else "REAL")
        assert len(a["frames"]) == a["faces_found"] > 0


def test_predict_reports_videos_it_cannot_judge(demo_model, demo_clips, tmp_path):
    work, tar = demo_model
    bad = tmp_path/"notes.mp4"; bad.write_text("not a video")
    good = sorted(demo_clips.glob("*/*.mp4"))[0]
    scratch = tmp_path/"tmp"; scratch.mkdir()
    proc = run_cli("predict", tar, good, bad, env={"TMPDIR": str(scratch)})
    assert proc.returncode == 1, describe(proc)
    assert "notes.mp4" in proc.stdout and "cannot open" in proc.stdout, describe(proc)
    assert good.name in proc.stdout
    assert list(scratch.glob("deepfake-model-*")) == [], "the unpacked model.tar.gz must be removed"


def _archive(model_dir:Path, out:Path, config:dict) -> Path:
    "A model.tar.gz of `model_dir`'s model.pt with `config` as its config.json."
    with tarfile.open(out, "w:gz") as tar:
        tar.add(model_dir/"model.pt", "model.pt")
        data = json.dumps(config).encode()
        info = tarfile.TarInfo("config.json"); info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    return out


# (the other config.json mistakes and a pickled model.pt are checked in nbs/07_model.ipynb, without a process each)
@pytest.mark.parametrize("case, words", [("not a tar", "is not a model.tar.gz"), ("backbone 123", "config.json: backbone is 123; it must be one of")])
def test_a_broken_model_archive_is_one_line_and_leaves_nothing(demo_model, demo_clips, tmp_path, case, words):
    work, _ = demo_model
    if case == "not a tar": (tmp_path/"model.tar.gz").write_text("not an archive")
    else:
        config = json.loads((work/"model"/"config.json").read_text())
        _archive(work/"model", tmp_path/"model.tar.gz", dict(config, backbone=123))
    scratch = tmp_path/"tmp"; scratch.mkdir()
    proc = run_cli("predict", tmp_path/"model.tar.gz", sorted(demo_clips.glob("*/*.mp4"))[0], env={"TMPDIR": str(scratch)})
    assert proc.returncode == 2, describe(proc)
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("deepfake-mlops predict: error: ") and words in lines[0], describe(proc)
    assert "weights_only" not in proc.stderr and str(scratch) not in proc.stderr, proc.stderr
    assert list(scratch.glob("deepfake-model-*")) == [], "a refused archive must leave no unpacked folder"
