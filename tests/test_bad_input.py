"A dataset with broken, odd and faceless videos: `extract` reports each one, processes the rest, and can be re-run."
from __future__ import annotations
import json, os, shutil, warnings
from pathlib import Path

import av
import cv2
import numpy as np
import pandas as pd
import pytest

from deepfake_mlops.demo import camera_frames, face_photos
from deepfake_mlops.faces import crop_square
from deepfake_mlops.manifest import read_manifest
from deepfake_mlops.video import sample_frames, tag_rotation, write_video
from helpers import describe, read_csv_text, run_cli, temp_leftovers

FRAMES = 16  # frames sampled per video

# relpath -> what `extract` must report: (status, words of which one must be in the reason, lower case)
EXPECTED = {
    "good.mp4": ("ok", ()),
    "one_frame.mp4": ("ok", ()),
    "portrait.mp4": ("ok", ()),
    "truncated_faststart.mp4": ("ok", ()),  # moov first: the frames before the cut still decode
    "no_face.mp4": ("no_face", ("no face",)),
    "zero.mp4": ("failed", ("empty", "0 bytes")),
    "truncated.mp4": ("failed", ("cannot open", "invalid data", "truncated", "moov")),
    "text.mp4": ("failed", ("cannot open", "invalid data", "not a video")),
    "dangling.mp4": ("failed", ("not found", "no such file")),  # a symlink to a file that is gone
}
DIRECTORY = "dir.mp4"  # a folder named like a video, listed in labels.csv


def _encode(path:Path, frames, faststart:bool=False):
    "H.264 MP4 written with PyAV directly; `faststart` puts the moov box before the media data."
    frames = list(frames)
    with av.open(str(path), "w", format="mp4", options={"movflags": "faststart"} if faststart else {}) as c:
        s = c.add_stream("libx264", rate=25)
        s.pix_fmt, (s.height, s.width) = "yuv420p", frames[0].shape[:2]
        for img in frames:
            for p in s.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(img), format="rgb24")): c.mux(p)
        for p in s.encode(): c.mux(p)


def _gradient_frames(n:int, size=(240, 320)):
    "Smoothly moving colour gradients: a real video with no face in it."
    y, x = np.mgrid[0:size[0], 0:size[1]]
    for t in range(n):
        yield np.stack([(x + 3 * t) % 256, (y + 2 * t) % 256, np.full_like(x, 128)], -1).astype(np.uint8)


@pytest.fixture(scope="module")
def bad_dataset(demo_clips, tmp_path_factory) -> dict:
    "A labels.csv folder with every kind of bad input, and facts about the files measured while building them."
    root = tmp_path_factory.mktemp("bad")/"data"
    scratch = root.parent/"scratch"; scratch.mkdir()
    root.mkdir()
    rng = np.random.default_rng(0)
    photos = face_photos()
    first_clip = read_manifest(demo_clips)["path"].iloc[0]
    shutil.copy(first_clip, root/"good.mp4")
    (root/"zero.mp4").touch()
    (root/"text.mp4").write_text("this is a text file, not a video\n" * 20)
    # a download cut short: MP4 with the moov box at the end, first third kept
    write_video(scratch/"whole.mp4", camera_frames(photos["astronaut"], 48, rng))
    data = (scratch/"whole.mp4").read_bytes()
    (root/"truncated.mp4").write_bytes(data[:len(data) // 3])
    # the same cut on a streaming (faststart) MP4: the index is intact, the frames before the cut decode
    _encode(scratch/"faststart.mp4", camera_frames(photos["astronaut"], 96, rng), faststart=True)
    data = (scratch/"faststart.mp4").read_bytes()
    assert data.find(b"moov") < data.find(b"mdat"), "faststart did not move the moov box first"
    (root/"truncated_faststart.mp4").write_bytes(data[:len(data) // 2])
    write_video(root/"no_face.mp4", _gradient_frames(24))
    photo = photos["grace_hopper"]
    write_video(root/"one_frame.mp4", [photo[:photo.shape[0] // 2 * 2, :photo.shape[1] // 2 * 2]])
    # a phone video: portrait frames stored landscape, with a display rotation that turns them upright
    portrait = list(camera_frames(photos["astronaut"], 24, rng, size=(240, 320)))
    write_video(root/"portrait.mp4", [np.rot90(f, 1) for f in portrait])
    tag_rotation(root/"portrait.mp4", 90)
    os.symlink(scratch/"deleted.mp4", root/"dangling.mp4")
    (root/DIRECTORY).mkdir()
    rows = [dict(path=p, label="REAL") for p in [*EXPECTED, DIRECTORY]]
    pd.DataFrame(rows).to_csv(root/"labels.csv", index=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ids = read_manifest(root).set_index("relpath")["video_id"].to_dict()
    return dict(root=root, ids=ids, portrait_frames=portrait,
                faststart_frames=len(sample_frames(scratch/"faststart.mp4", FRAMES)))


@pytest.fixture(scope="module")
def runs(bad_dataset, tmp_path_factory):
    "Two runs of `extract` into one folder, with the state of the folder after the first."
    out = tmp_path_factory.mktemp("bad-out")/"faces"
    first = run_cli("extract", bad_dataset["root"], "--out", out, "--frames", FRAMES, "--workers", 2)
    state = dict(summary=json.loads((out/"summary.json").read_text()) if (out/"summary.json").exists() else None,
                 videos=read_csv_text(out/"videos.csv") if (out/"videos.csv").exists() else None,
                 faces=read_csv_text(out/"faces.csv") if (out/"faces.csv").exists() else None,
                 leftovers=temp_leftovers(out),
                 parts={p.name: p.stat().st_mtime_ns for p in (out/"parts").glob("*.csv")})
    second = run_cli("extract", bad_dataset["root"], "--out", out, "--frames", FRAMES, "--workers", 2)
    return dict(out=out, first=first, second=second, **state)


def _by_relpath(videos:pd.DataFrame) -> dict:
    return {r["relpath"]: r for r in videos.to_dict("records")}


def test_partial_failure_exit_code_and_every_video_reported(runs, bad_dataset):
    assert runs["first"].returncode == 1, "some videos failed: the exit status must say so\n" + describe(runs["first"])
    videos = runs["videos"]
    assert videos is not None, describe(runs["first"])
    assert sorted(videos["relpath"]) == sorted(EXPECTED), "videos.csv must list every video of the manifest once"
    for relpath, row in _by_relpath(videos).items():
        status, words = EXPECTED[relpath]
        assert row["status"] == status, f"{relpath}: {row['status']} ({row['reason']}), expected {status}"
        if status == "failed":
            assert relpath in row["reason"], f"{relpath}: the reason must name the file: {row['reason']!r}"
        if words:
            assert any(w in row["reason"].lower() for w in words), f"{relpath}: reason {row['reason']!r} names none of {words}"
        else:
            assert row["reason"] == "", f"{relpath}: ok but with reason {row['reason']!r}"


def test_summary_lists_the_problems(runs):
    summary, videos = runs["summary"], runs["videos"]
    expected = {(r["video_id"], r["status"], r["reason"]) for r in videos.to_dict("records") if r["status"] != "ok"}
    assert {(p["video_id"], p["status"], p["reason"]) for p in summary["problems"]} == expected
    counts = videos["status"].value_counts()
    assert (summary["ok"], summary["no_face"], summary["failed"]) == (counts["ok"], counts["no_face"], counts["failed"])
    assert summary["videos"] == summary["processed"] == len(EXPECTED) and summary["skipped"] == 0, summary
    printed = runs["first"].stdout
    assert all(p["reason"] in printed for p in summary["problems"]), "the problems must be printed too:\n" + printed


def test_directory_named_like_a_video_is_reported(runs):
    assert DIRECTORY in runs["first"].stderr, "the skipped entry must be named in a warning:\n" + runs["first"].stderr
    assert not (runs["out"]/"crops"/Path(DIRECTORY).stem).exists()


def test_index_holds_only_finished_videos(runs, bad_dataset):
    finished = {bad_dataset["ids"][r] for r, (status, _) in EXPECTED.items() if status != "failed"}
    faces, out = runs["faces"], runs["out"]
    assert set(faces["video_id"]) == finished
    assert {p.stem for p in (out/"parts").glob("*.csv")} == finished
    assert {p.name for p in (out/"crops").iterdir()} == finished, "failed videos must leave no crops folder"
    assert all((out/c).is_file() for c in faces["crop_path"] if c)
    with_crops = set(faces.loc[faces["crop_path"] != "", "video_id"])
    assert bad_dataset["ids"]["no_face.mp4"] not in with_crops
    assert with_crops == finished - {bad_dataset["ids"]["no_face.mp4"]}


def test_no_temporary_files_left(runs):
    assert runs["leftovers"] == [], "after the first run"
    assert temp_leftovers(runs["out"]) == [], "after the second run"


def test_odd_but_readable_videos(runs, bad_dataset):
    videos = _by_relpath(runs["videos"])
    assert int(videos["one_frame.mp4"]["frames"]) == 1
    assert int(videos["one_frame.mp4"]["faces"]) >= 1
    partial = int(videos["truncated_faststart.mp4"]["frames"])
    assert 0 < partial < bad_dataset["faststart_frames"], (
        f"{partial} frames from the cut file, {bad_dataset['faststart_frames']} from the whole one")


def test_portrait_video_is_turned_upright(runs, bad_dataset):
    "Each crop of the phone video matches the same box cut from the upright frame it was rendered from."
    faces, out = runs["faces"], runs["out"]
    rows = faces[(faces["video_id"] == bad_dataset["ids"]["portrait.mp4"]) & (faces["main"] == "True")]
    assert len(rows), "no face found in the portrait video"
    upright = bad_dataset["portrait_frames"]
    for r in rows.to_dict("records"):
        crop = cv2.cvtColor(cv2.imread(str(out/r["crop_path"])), cv2.COLOR_BGR2RGB).astype(np.float32)
        box = [float(r[k]) for k in ("x0", "y0", "x1", "y1")]
        expected = crop_square(upright[int(r["frame_index"])], box, crop.shape[0]).astype(np.float32)
        # mean absolute difference to the expected crop, as is and turned by 90, 180 and 270 degrees
        diffs = [float(np.abs(crop - np.rot90(expected, k)).mean()) for k in range(4)]
        assert diffs[0] == min(diffs) and diffs[0] < 30, (
            f"frame {r['frame_index']}: the crop is not the upright face (differences by rotation {np.round(diffs, 1)})")


def test_rerun_skips_finished_and_retries_failed(runs, bad_dataset):
    second = runs["second"]
    assert second.returncode == 1, describe(second)
    summary = json.loads((runs["out"]/"summary.json").read_text())
    first = runs["videos"]
    finished = int((first["status"] != "failed").sum())
    failed = int((first["status"] == "failed").sum())
    assert summary["skipped"] == finished and summary["processed"] == failed, summary
    again = read_csv_text(runs["out"]/"videos.csv")
    pd.testing.assert_frame_equal(again, first, obj="videos.csv after the re-run")
    pd.testing.assert_frame_equal(read_csv_text(runs["out"]/"faces.csv"), runs["faces"], obj="faces.csv after the re-run")
    assert {p.name: p.stat().st_mtime_ns for p in (runs["out"]/"parts").glob("*.csv")} == runs["parts"], \
        "the parts of finished videos must not be rewritten"


def test_video_counts_are_whole_numbers(runs):
    videos = runs["videos"]
    for column in ("frames", "frames_with_face", "faces", "crops"):
        assert videos[column].str.fullmatch(r"\d+").all(), f"videos.csv {column}: {videos[column].tolist()}"
