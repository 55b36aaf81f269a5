"`deepfake-mlops` end to end: the command line contract, face extraction on the FaceForensics++ sample, and folders of unlabelled videos."
from __future__ import annotations
import io, json, os, re, shutil
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest

from deepfake_mlops.data import crop_landmarks
from deepfake_mlops.faces import LANDMARKS_FILE, VIDEO_META
from deepfake_mlops.manifest import COLUMNS, read_manifest, read_manifest_csv
from helpers import describe, read_csv_text, run_cli, temp_leftovers

FRAMES = 8  # frames sampled per video in the FF++ run (the default, 32, costs 30 s more; any count tests the same code)
FACE_SIZE = 224
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
JPEG_SIGNATURE = b"\xff\xd8\xff"

# ---------------------------------------------------------------------------------------------- CLI basics

# every command the README documents, written out here rather than read from the parser
SUBCOMMANDS = ["weights", "manifest", "extract", "train", "crossval", "evaluate", "predict", "serve", "deploy", "predict-endpoint",
               "monitor", "contact-sheet", "demo", "pipeline", "run", "serve-sagemaker", "models", "executions", "stack", "endpoints"]

def test_help_lists_every_subcommand():
    proc = run_cli("--help")
    assert proc.returncode == 0, describe(proc)
    # argparse lists each command at the start of its own line, indented by four spaces (help text wraps deeper)
    listed = re.findall(r"^ {4}([a-z][a-z-]*)(?: |$)", proc.stdout, re.M)
    assert sorted(listed) == sorted(SUBCOMMANDS), f"--help lists {listed}, expected {SUBCOMMANDS}:\n{proc.stdout}"

@pytest.mark.parametrize("command", SUBCOMMANDS)
def test_subcommand_help(command):
    proc = run_cli(command, "--help")
    assert proc.returncode == 0, describe(proc)
    assert f"deepfake-mlops {command}" in proc.stdout, proc.stdout

def test_extract_missing_folder_is_a_usage_error(tmp_path):
    missing, out = tmp_path/"no-such-dataset", tmp_path/"out"
    proc = run_cli("extract", missing, "--out", out)
    assert proc.returncode == 2, describe(proc)
    assert str(missing) in proc.stderr, describe(proc)
    assert "Traceback" not in proc.stderr, "a usage error must be one line, not a traceback:\n" + proc.stderr
    assert not out.exists(), "a run refused for bad input must not create the output folder"

def test_extract_without_out_is_a_usage_error(tmp_path):
    proc = run_cli("extract", tmp_path)
    assert proc.returncode == 2, describe(proc)
    assert "--out" in proc.stderr, describe(proc)

# exit 1 means "some videos failed or showed no face"; a run that cannot start must say why and exit 2
@pytest.mark.parametrize("workers", [
    1, 2])
def test_extract_without_weights_says_how_to_get_them(demo_clips, tmp_path, workers):
    empty_cache = tmp_path/"cache"; empty_cache.mkdir()
    proc = run_cli("extract", demo_clips, "--out", tmp_path/"out", "--workers", workers,
                   env={"DEEPFAKE_MLOPS_CACHE": str(empty_cache)})
    assert proc.returncode == 2, describe(proc)
    assert "deepfake-mlops weights" in proc.stderr and "Traceback" not in proc.stderr, describe(proc)

def test_extract_out_inside_a_file_is_a_usage_error(demo_clips, tmp_path):
    (tmp_path/"a-file").write_text("not a folder")
    out = tmp_path/"a-file"/"out"
    proc = run_cli("extract", demo_clips, "--out", out)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, describe(proc)
    assert str(out) in proc.stderr, describe(proc)

def test_manifest_prints_one_csv_row_per_video(ffpp):
    proc = run_cli("manifest", ffpp)
    assert proc.returncode == 0, describe(proc)
    df = pd.read_csv(io.StringIO(proc.stdout), dtype=str, keep_default_na=False)
    videos_on_disk = sorted(p.relative_to(ffpp).as_posix() for p in ffpp.rglob("*.mp4"))
    assert list(df.columns) == COLUMNS
    assert len(df) == len(videos_on_disk) == 68, f"{len(df)} rows for {len(videos_on_disk)} videos"
    assert sorted(df["relpath"]) == videos_on_disk
    assert all(Path(p).is_file() for p in df["path"]), "every manifest path must point at the video"
    expected = np.where(df["relpath"].str.startswith("manipulated_sequences/"), "FAKE", "REAL")
    assert (df["label"] == expected).all(), df.loc[df["label"] != expected, ["relpath", "label"]]

# ---------------------------------------------------------------------------------------------- FF++ end to end

@pytest.fixture(scope="session")
def ffpp_run(ffpp, tmp_path_factory):
    "One `deepfake-mlops extract` of the FF++ sample (about 40 s on 2 cores), shared by the tests below."
    out = tmp_path_factory.mktemp("ffpp")/"faces"
    proc = run_cli("extract", ffpp, "--out", out, "--frames", FRAMES, "--workers", 2)
    return proc, out

@pytest.fixture(scope="session")
def ffpp_faces(ffpp_run) -> pd.DataFrame:
    proc, out = ffpp_run
    assert (out/"faces.csv").is_file(), describe(proc)
    return read_csv_text(out/"faces.csv")

def test_ffpp_extract_succeeds(ffpp_run, ffpp):
    proc, out = ffpp_run
    assert proc.returncode == 0, describe(proc)
    summary = json.loads((out/"summary.json").read_text())
    n = len(list(ffpp.rglob("*.mp4")))
    assert summary["videos"] == summary["processed"] == summary["ok"] == n == 68, summary
    assert summary["failed"] == summary["no_face"] == summary["skipped"] == 0, summary
    assert summary["problems"] == []
    videos = read_csv_text(out/"videos.csv")
    assert len(videos) == n and set(videos["status"]) == {"ok"}, videos[videos["status"] != "ok"]
    assert temp_leftovers(out) == []

def test_ffpp_face_rate_from_the_index(ffpp_run, ffpp_faces):
    _, out = ffpp_run
    face = ffpp_faces["face"].astype(int)
    per_frame = face.groupby([ffpp_faces["video_id"], ffpp_faces["frame_index"]]).max()
    sampled, with_face = len(per_frame), int((per_frame >= 0).sum())
    assert with_face / sampled >= 0.97, f"faces found in only {with_face} of {sampled} sampled frames"
    frames_per_video = per_frame.groupby(level="video_id").size()
    # every FF++ video is hundreds of frames long, so it yields exactly the frames asked for
    assert (frames_per_video == FRAMES).all(), frames_per_video[frames_per_video != FRAMES]
    summary = json.loads((out/"summary.json").read_text())
    assert (summary["frames"], summary["frames_with_face"]) == (sampled, with_face), "summary.json disagrees with faces.csv"
    assert summary["face_rate"] == pytest.approx(with_face / sampled, abs=1e-4)

def test_ffpp_crops_are_square_jpegs(ffpp_run, ffpp_faces):
    _, out = ffpp_run
    crops = ffpp_faces.loc[ffpp_faces["crop_path"] != "", "crop_path"].tolist()
    assert crops, "no crops listed in faces.csv"
    missing = [c for c in crops if not (out/c).is_file()]
    assert not missing, f"{len(missing)} crops listed in faces.csv are missing, e.g. {missing[:3]}"
    not_jpeg = [c for c in crops if (out/c).read_bytes()[:3] != JPEG_SIGNATURE]
    assert not not_jpeg, f"not JPEG files: {not_jpeg[:3]}"
    for c in crops[::max(1, len(crops)//60)]:
        image = cv2.imread(str(out/c))
        assert image is not None and image.shape == (FACE_SIZE, FACE_SIZE, 3), (c, None if image is None else image.shape)
    on_disk = {p.relative_to(out).as_posix() for p in (out/"crops").rglob("*") if p.is_file() and p.name != LANDMARKS_FILE}
    assert on_disk == set(crops), f"crops not in faces.csv: {sorted(on_disk - set(crops))[:3]}"
    # each face row of the main person has its crop; rows without a face have none
    no_face = ffpp_faces["face"].astype(int) < 0
    assert (ffpp_faces.loc[no_face, "crop_path"] == "").all()
    assert (ffpp_faces.loc[ffpp_faces["main"] == "True", "crop_path"] != "").all()

def test_ffpp_landmarks_are_kept_with_every_crop(ffpp_run, ffpp_faces):
    "Each crop has its 468 face landmarks beside it, in crop pixels, on the face: training reads them, never the model."
    _, out = ffpp_run
    crops = ffpp_faces[ffpp_faces["crop_path"] != ""]
    for video_id, rows in crops.groupby("video_id"):
        points = crop_landmarks(out, video_id)
        assert sorted(points) == sorted(rows["frame_index"].astype(int)), video_id
        stacked = np.stack(list(points.values()))
        assert stacked.shape[1:] == (468, 2), (video_id, stacked.shape)
        # the crop is the detection box plus a 30% margin: the face mesh fills its middle, eyes above the mouth
        inside = ((stacked >= 0) & (stacked < FACE_SIZE)).all(-1).mean()
        assert inside > 0.97, (video_id, inside)
        centre = stacked.mean(1)
        assert (np.abs(centre - FACE_SIZE / 2) < 0.2 * FACE_SIZE).all(), (video_id, centre.min(0), centre.max(0))
        eyes, mouth = stacked[:, [33, 263]].mean(1), stacked[:, 13]
        assert (eyes[:, 1] < mouth[:, 1]).mean() > 0.9, video_id

def test_ffpp_rows_carry_the_manifest_labels(ffpp, ffpp_run, ffpp_faces):
    _, out = ffpp_run
    manifest = read_manifest(ffpp)
    # the manifest (identities, splits) is kept beside the crops
    pd.testing.assert_frame_equal(read_manifest_csv(out/"manifest.csv"), manifest.astype(str), obj="OUT/manifest.csv")
    manifest = manifest.set_index("video_id")
    assert set(ffpp_faces["video_id"]) == set(manifest.index), "every video of the manifest must be in faces.csv"
    fields = sorted({"relpath", "label", "method", "group", "dataset"} | (set(VIDEO_META) - {"video_id"}))
    expected = manifest.loc[ffpp_faces["video_id"], fields].reset_index(drop=True)
    mismatch = (ffpp_faces[fields] != expected).any(axis=1)
    assert not mismatch.any(), ffpp_faces.loc[mismatch, ["video_id", *fields]].head()
    fake = ffpp_faces["relpath"].str.startswith("manipulated_sequences/")
    assert (ffpp_faces.loc[fake, "label"] == "FAKE").all() and (ffpp_faces.loc[~fake, "label"] == "REAL").all()
    assert (ffpp_faces.loc[~fake, "method"] == "original").all()

def test_ffpp_contact_sheet(ffpp_run, ffpp_faces, tmp_path):
    _, out = ffpp_run
    png = out/"contact_sheet.png"
    assert png.is_file(), "extract draws contact_sheet.png unless --no-contact-sheet"
    assert png.read_bytes()[:8] == PNG_SIGNATURE
    image = cv2.imread(str(png))
    # the documented sheet: 96 px thumbnails, 8 per row, one row per video up to 40 rows, and a 320 px column of labels
    # (3.2 in at 100 dpi); the 68 videos of the sample, all with crops, make 40 rows
    assert ffpp_faces.loc[ffpp_faces["crop_path"] != "", "video_id"].nunique() == 68
    assert abs(image.shape[0] - 40 * 96) <= 1 and abs(image.shape[1] - (8 * 96 + 320)) <= 1, image.shape
    # and `deepfake-mlops contact-sheet` draws what it is asked for: 5 rows of 3
    small = tmp_path/"small.png"
    proc = run_cli("contact-sheet", out, "--png", small, "--per-video", 3, "--max-videos", 5)
    assert proc.returncode == 0 and proc.stdout.strip() == str(small), describe(proc)
    image = cv2.imread(str(small))
    assert abs(image.shape[0] - 5 * 96) <= 1 and abs(image.shape[1] - (3 * 96 + 320)) <= 1, image.shape

# ---------------------------------------------------------------------------------------------- output files

@pytest.fixture(scope="module")
def demo_run(demo_clips, tmp_path_factory):
    out = tmp_path_factory.mktemp("demo-run")/"faces"
    proc = run_cli("extract", demo_clips, "--out", out, "--workers", 1)
    assert proc.returncode == 0, describe(proc)
    return out

def test_outputs_are_readable_as_the_umask_allows(demo_run):
    umask = os.umask(0); os.umask(umask)
    expected = 0o666 & ~umask
    files = [demo_run/"faces.csv", demo_run/"videos.csv", demo_run/"summary.json", demo_run/"contact_sheet.png",
             *sorted((demo_run/"parts").glob("*.csv"))]
    modes = {f.relative_to(demo_run).as_posix(): oct(f.stat().st_mode & 0o777) for f in files}
    wrong = {f: m for f, m in modes.items() if m != oct(expected)}
    assert not wrong, f"expected mode {oct(expected)} (umask {oct(umask)}), got {wrong}"

# ---------------------------------------------------------------------------------------------- unlabelled videos

@pytest.fixture(scope="module")
def unlabelled_clips(demo_clips, tmp_path_factory) -> Path:
    "Three demo clips copied into a folder of their own, without labels.csv: new videos nobody has labelled."
    folder = tmp_path_factory.mktemp("unlabelled")/"videos"
    folder.mkdir()
    for clip in sorted(demo_clips.rglob("*.mp4"))[::4][:3]: shutil.copy(clip, folder/clip.name)
    assert len(list(folder.glob("*.mp4"))) == 3 and not (folder/"labels.csv").exists()
    return folder

@pytest.fixture(scope="module")
def unlabelled_faces(unlabelled_clips, tmp_path_factory):
    "One `deepfake-mlops extract` of the unlabelled clips: (the finished command, its output folder)."
    out = tmp_path_factory.mktemp("unlabelled-faces")/"faces"
    return run_cli("extract", unlabelled_clips, "--out", out, "--frames", 8, "--workers", 1), out

def test_manifest_of_an_unlabelled_folder_has_unknown_labels(unlabelled_clips):
    proc = run_cli("manifest", unlabelled_clips)
    assert proc.returncode == 0, describe(proc)
    df = pd.read_csv(io.StringIO(proc.stdout), dtype=str, keep_default_na=False)
    assert list(df.columns) == COLUMNS
    assert sorted(df["relpath"]) == sorted(p.name for p in unlabelled_clips.glob("*.mp4"))
    assert set(df["label"]) == {"UNKNOWN"} and set(df["dataset"]) == {"unlabelled"}, df
    assert df["identities"].is_unique, "each unlabelled video is its own identity"

def test_extract_an_unlabelled_folder(unlabelled_faces):
    proc, out = unlabelled_faces
    assert proc.returncode == 0, describe(proc)
    summary = json.loads((out/"summary.json").read_text())
    assert summary["videos"] == summary["ok"] == 3, summary
    faces = read_csv_text(out/"faces.csv")
    assert set(faces["label"]) == {"UNKNOWN"}, set(faces["label"])
    crops = faces.loc[faces["crop_path"] != "", "crop_path"]
    assert len(crops) and all((out/c).is_file() for c in crops)
    assert (out/"contact_sheet.png").read_bytes()[:8] == PNG_SIGNATURE

def test_predict_judges_every_video_of_a_folder(demo_model, unlabelled_clips):
    _, tar = demo_model
    one = sorted(unlabelled_clips.glob("*.mp4"))[0]
    proc = run_cli("predict", tar, unlabelled_clips, one, "--json")
    assert proc.returncode == 0, describe(proc)
    results = json.loads(proc.stdout)
    expected = [str(p) for p in sorted(unlabelled_clips.glob("*.mp4"))] + [str(one)]
    assert [r["video"] for r in results] == expected
    assert all(r["label"] in ("REAL", "FAKE") and 0 <= r["probability"] <= 1 for r in results), results

def test_predict_on_a_folder_without_videos_is_a_usage_error(demo_model, tmp_path):
    _, tar = demo_model
    proc = run_cli("predict", tar, tmp_path)
    assert proc.returncode == 2 and "no video files" in proc.stderr and "Traceback" not in proc.stderr, describe(proc)

@pytest.mark.parametrize("command", ["train", "evaluate-videos", "evaluate-faces"])
def test_train_and_evaluate_say_they_need_labels(command, demo_model, unlabelled_clips, unlabelled_faces, tmp_path):
    work, _ = demo_model
    _, faces = unlabelled_faces
    out = tmp_path/"out"
    args = {"train": ["train", faces, "--out", out],
            "evaluate-videos": ["evaluate", work/"model", unlabelled_clips, "--out", out],
            "evaluate-faces": ["evaluate", work/"model", faces, "--out", out]}[command]
    proc = run_cli(*args)
    assert proc.returncode == 2, describe(proc)
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, f"expected a one-line reason, got:\n{proc.stderr}"
    assert "needs labelled videos" in lines[0] and "labels.csv" in lines[0] and "path,label" in lines[0], lines[0]
    assert not out.exists(), "a run refused for missing labels must not create its output folder"
