"Serving the trained model: model.tar.gz is self-contained and gives the same scores as the evaluation."
from __future__ import annotations
import json, sys, subprocess
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
    proc = run_cli("predict", work/"model", good, bad)
    assert proc.returncode == 1, describe(proc)
    assert "notes.mp4" in proc.stdout and "cannot open" in proc.stdout, describe(proc)
    assert good.name in proc.stdout
