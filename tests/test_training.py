"Training end to end as a user runs it: leak-free splits, distributed launch, kill and resume, and bad input."
from __future__ import annotations
import json, os, signal, subprocess, sys, time
from pathlib import Path

import pandas as pd
import pytest

from deepfake_mlops.data import split_videos, read_split
from deepfake_mlops.manifest import read_manifest

from helpers import describe, run_cli


def test_no_identity_in_two_splits_on_ffpp(ffpp):
    manifest = read_manifest(ffpp)
    split = split_videos(manifest)
    per_identity = (manifest[["video_id", "identities"]].merge(split, on="video_id")
                    .assign(identity=lambda d: d["identities"].str.split(";")).explode("identity")
                    .groupby("identity")["split"].nunique())
    assert (per_identity == 1).all(), per_identity[per_identity > 1]
    for s in ("train", "val", "test"):
        labels = set(manifest.loc[split["split"].eq(s).values, "label"])
        assert labels == {"REAL", "FAKE"}, (s, labels)
    # 183_253 and 253_183 (both ways) and every method's fakes of that pair stay together
    pair = split[manifest["identities"].eq("ffpp:183;ffpp:253").values]
    assert len(pair) >= 2 and pair["split"].nunique() == 1


def test_entry_point_reads_sagemaker_defaults_and_every_setting(monkeypatch, tmp_path):
    "`python -m deepfake_mlops.train` as SageMaker calls it: channels from SM_* variables, hyperparameters as text."
    from deepfake_mlops.core import TrainConfig, from_options
    from deepfake_mlops.train import parse_args
    monkeypatch.setenv("SM_CHANNEL_TRAIN", str(tmp_path/"train"))
    monkeypatch.setenv("SM_MODEL_DIR", str(tmp_path/"model"))
    args = parse_args(["--epochs", "3", "--batch-size", "16", "--lr", "0.001", "--pretrained", "False"])
    assert (args.train, args.model_dir) == (str(tmp_path/"train"), str(tmp_path/"model"))
    assert from_options(TrainConfig, args) == TrainConfig(epochs=3, batch_size=16, lr=0.001, pretrained=False)
    assert from_options(TrainConfig, parse_args([])) == TrainConfig()


def _train_argv(faces, out, *extra):
    return [sys.executable, "-m", "deepfake_mlops.train", "--train", str(faces), "--model-dir", str(out),
            "--batch-size", "8", "--crops-per-video", "4", "--workers", "0", *map(str, extra)]


def test_distributed_training_with_two_processes(demo_faces, tmp_path):
    "Launched like SageMaker's torch_distributed (torchrun), two CPU processes train one model over gloo (of the other backbone)."
    out = tmp_path/"model"
    torchrun = Path(sys.executable).parent/"torchrun"
    argv = _train_argv(demo_faces, out, "--epochs", 1, "--backbone", "efficientnet_lite0")[1:]
    proc = subprocess.run([str(torchrun), "--standalone", "--nproc_per_node", "2", *argv], capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, describe(proc)
    summary = json.loads((out/"train.json").read_text())
    assert summary["world_size"] == 2 and summary["epochs_run"] == 1
    metrics = pd.read_csv(out/"metrics.csv", dtype={"images_per_rank": str})
    assert len(metrics) == 1
    # each process counted the crops it trained on itself: both drew their half of the epoch's sample (4 crops per
    # training video, as many class-balanced draws), every other crop, in batches of 8 without a partial last batch
    split = read_split(out/"split.csv")
    faces = pd.read_csv(demo_faces/"faces.csv", dtype=str, keep_default_na=False)
    train_crops = faces[(faces["crop_path"] != "") & faces["video_id"].isin(split.loc[split["split"] == "train", "video_id"])]
    drawn = int(train_crops.groupby("video_id").size().clip(upper=4).sum())
    halves = [drawn // 2] * 2  # an odd draw left out: both processes take as many steps
    expected = [n - n % 8 if n > 8 else n for n in halves]
    per_rank = [int(n) for n in metrics["images_per_rank"][0].split(";")]
    assert per_rank == expected and metrics["images"][0] == sum(per_rank), (per_rank, expected, drawn)
    from deepfake_mlops.model import load_model
    model = load_model(out)  # refuses weights that do not fit the backbone config.json names
    assert model.config["backbone"] == "efficientnet_lite0" and model.backbone_name == "efficientnet_lite0"


@pytest.fixture(scope="module")
def demo_shards(demo_clips, tmp_path_factory) -> Path:
    "The demo clips' crops (8 frames each) in the shards layout, a quarter of a MiB a shard: four shards."
    out = tmp_path_factory.mktemp("shards")/"faces"
    proc = run_cli("extract", demo_clips, "--out", out, "--frames", 8, "--workers", 2, "--no-contact-sheet",
                   "--layout", "shards", "--shard-mb", 0.25)
    assert proc.returncode == 0, describe(proc)
    assert len(list((out/"shards").glob("*.tar"))) >= 4
    return out


def test_training_from_shards_is_training_from_files(demo_faces, demo_shards, tmp_path):
    "The same seed from files and from shards: read by offset, the same model to the bit; streamed, as many images and steps."
    from deepfake_mlops.data import read_crops
    from deepfake_mlops.evaluate import score_crops
    from deepfake_mlops.model import load_model
    runs = dict(files=(demo_faces,), offset=(demo_shards, "--shard-reads", "offset"), stream=(demo_shards,))
    for name, (faces, *extra) in runs.items():
        proc = subprocess.run(_train_argv(faces, tmp_path/name, "--epochs", 2, *extra), capture_output=True, text=True, timeout=900)
        assert proc.returncode == 0, describe(proc)
    split = read_split(tmp_path/"files"/"split.csv")
    assert split.equals(read_split(tmp_path/"stream"/"split.csv"))  # the same videos from either layout
    metrics = {n: pd.read_csv(tmp_path/n/"metrics.csv") for n in runs}
    same = ["train_loss", "images", "val_auc", "val_log_loss", "val_accuracy"]
    pd.testing.assert_frame_equal(metrics["files"][same], metrics["offset"][same], check_exact=True)
    # streaming changes the order, not the amount: every draw but a last short batch, as from files
    assert metrics["stream"]["images"].tolist() == metrics["files"]["images"].tolist(), (metrics["stream"], metrics["files"])
    assert metrics["stream"]["val_auc"].between(0, 1).all() and (metrics["stream"]["val_log_loss"] > 0).all()
    crops = {n: read_crops(f, split).sort_values("crop_path").reset_index(drop=True) for n, f in (("files", demo_faces), ("shards", demo_shards))}
    assert (crops["shards"]["shard_file"] != "").all() and (crops["files"]["crop_file"] != "").all()
    # the self-blend masks follow the same landmarks, kept in the shards and found there by offset
    real = crops["files"]["label"] == "REAL"  # only real faces are self-blended: only theirs are read
    assert real.any() and crops["files"].loc[real, "landmarks"].notna().all() and crops["files"].loc[~real, "landmarks"].isna().all()
    assert all((a == b).all() for a, b in zip(crops["files"].loc[real, "landmarks"], crops["shards"].loc[real, "landmarks"]))
    model = load_model(tmp_path/"stream")
    val = {n: c.query("split == 'val'") for n, c in crops.items()}
    assert (score_crops(model, val["files"]) == score_crops(model, val["shards"])).all()


def test_distributed_training_reads_each_shard_in_one_process(demo_shards, tmp_path):
    "Two torchrun processes over the shards: each reads its own, and both take the same number of whole batches (or DDP would hang)."
    out = tmp_path/"model"
    argv = _train_argv(demo_shards, out, "--epochs", 1)[1:]
    proc = subprocess.run([str(Path(sys.executable).parent/"torchrun"), "--standalone", "--nproc_per_node", "2", *argv],
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, describe(proc)
    metrics = pd.read_csv(out/"metrics.csv", dtype={"images_per_rank": str, "steps_per_rank": str})
    steps = [int(n) for n in metrics["steps_per_rank"][0].split(";")]
    images = [int(n) for n in metrics["images_per_rank"][0].split(";")]
    assert steps[0] == steps[1] > 0 and images == [8 * k for k in steps], (steps, images)


def test_killed_training_resumes_from_its_checkpoint(demo_faces, tmp_path):
    out = tmp_path/"model"
    proc = subprocess.Popen(_train_argv(demo_faces, out, "--epochs", 3), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    ckpt = out/"checkpoints"/"last.pt"
    deadline = time.time() + 600
    while not ckpt.exists() and proc.poll() is None and time.time() < deadline: time.sleep(0.5)
    assert ckpt.exists(), "no checkpoint was written"
    proc.send_signal(signal.SIGKILL); proc.wait()
    import torch
    state = torch.load(ckpt, map_location="cpu", weights_only=True)
    done_before = state["epoch"] + 1  # epochs finished and checkpointed before the kill
    assert 1 <= done_before < 3
    resumed = subprocess.run(_train_argv(demo_faces, out, "--epochs", 3), capture_output=True, text=True, timeout=900)
    assert resumed.returncode == 0, describe(resumed)
    assert f"after epoch {done_before}" in resumed.stdout + resumed.stderr, describe(resumed)
    # the resumed call trained only the epochs that were left; the finished ones kept their records
    summary = json.loads((out/"train.json").read_text())
    assert (summary["epochs_run"], summary["epochs_trained"]) == (3, 3 - done_before), summary
    metrics = pd.read_csv(out/"metrics.csv")
    assert metrics["epoch"].tolist() == [1, 2, 3]
    before = pd.DataFrame(json.loads(state["history"]))
    assert metrics["train_loss"][:done_before].tolist() == pytest.approx(before["train_loss"].tolist(), rel=1e-9)
    # the saved calibration is the one fitted on the saved model's validation frames
    from deepfake_mlops.data import read_crops
    from deepfake_mlops.evaluate import fit_calibration, score_crops
    from deepfake_mlops.model import load_model
    model = load_model(out)
    val = read_crops(demo_faces, read_split(out/"split.csv")).query("split == 'val'").reset_index(drop=True)
    saved, model.calibration = model.calibration, dict(scale=1.0, bias=0.0)
    refit = fit_calibration(score_crops(model, val), val["target"], val["video_id"])
    assert (refit["scale"], refit["bias"]) == pytest.approx((saved["scale"], saved["bias"]), abs=2e-3)
    assert model.config["threshold"] == 0.5
    model.calibration = saved
    # and the interrupted run ends where an uninterrupted one with the same seed does: same epochs, same weights
    whole = subprocess.run(_train_argv(demo_faces, tmp_path/"whole", "--epochs", 3), capture_output=True, text=True, timeout=900)
    assert whole.returncode == 0, describe(whole)
    assert pd.read_csv(tmp_path/"whole"/"metrics.csv")["train_loss"].tolist() == pytest.approx(metrics["train_loss"].tolist(), rel=1e-6)
    uninterrupted = load_model(tmp_path/"whole").state_dict()
    for name, tensor in model.state_dict().items():
        assert torch.allclose(tensor.float(), uninterrupted[name].float(), atol=1e-6), name


def test_bad_training_input_fails_clearly(demo_faces, tmp_path):
    # a split whose validation part has a single class
    split = read_split_from(demo_faces)
    split.loc[:, "split"] = "train"
    split.loc[split.index[0], "split"] = "val"
    bad = tmp_path/"split.csv"; split.to_csv(bad, index=False)
    proc = subprocess.run(_train_argv(demo_faces, tmp_path/"m1", "--epochs", 1, "--split", bad), capture_output=True, text=True)
    assert proc.returncode != 0 and "validation split needs REAL and FAKE" in proc.stderr, describe(proc)
    assert not (tmp_path/"m1"/"model.pt").exists()
    # a learning rate the options refuse (at most 1) ...
    proc = subprocess.run(_train_argv(demo_faces, tmp_path/"m2", "--epochs", 1, "--lr", "1e30"), capture_output=True, text=True)
    assert proc.returncode == 2 and "lr (--lr) is 1e+30; it must be a number above 0 and at most 1" in proc.stderr, describe(proc)
    # ... and a loss that blows up all the same (no learning rate the options allow does it within a few steps on
    # these crops, so the config is changed after its check): training stops at the first non-finite loss, saving nothing
    from deepfake_mlops.core import TrainConfig
    from deepfake_mlops.train import train
    cfg = TrainConfig(epochs=1, batch_size=8, crops_per_video=4, workers=0, blend="none")
    cfg.lr = 1e30
    with pytest.raises(FloatingPointError, match="training loss became .* lower the learning rate"):
        train(demo_faces, tmp_path/"m2", cfg, progress=False)
    assert not (tmp_path/"m2"/"model.pt").exists()


def read_split_from(faces):
    manifest = pd.read_csv(faces/"manifest.csv", dtype=str, keep_default_na=False)
    return split_videos(manifest, fractions=(0.5, 0.25, 0.25))


def test_model_folder_of_another_backbone_is_refused(demo_faces, tmp_path):
    from deepfake_mlops.model import build_model, save_model, load_model
    out = save_model(build_model("mobilenet_v2", pretrained=False), tmp_path/"m")
    cfg = json.loads((out/"config.json").read_text()); cfg["backbone"] = "efficientnet_lite0"
    (out/"config.json").write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match="do not fit that backbone"): load_model(out)
    proc = run_cli("evaluate", out, demo_faces, "--out", tmp_path/"eval")
    assert proc.returncode == 2 and "do not fit that backbone" in proc.stderr, describe(proc)
    assert not (tmp_path/"eval"/"evaluation.json").exists()
