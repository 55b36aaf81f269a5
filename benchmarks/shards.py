"""Training from tar shards next to training from a JPEG file per crop: the same crops, seeds and settings, in one run.

Three ways to read the same crops: `files` (a JPEG file per crop), `stream` (shards read front to back, each reader
its own shards, a buffer shuffle; the default for shards) and `offset` (shards read crop by crop at the offsets of
the index, in the files layout's order). For each seed, and each way in a rotating order: the epoch's draws read
as bytes alone (storage), through the training DataLoader (reading, decoding, self-blending, augmenting; no model),
then a training of `--epochs` in a fresh process. Reported: images/s of each, the ratios to `files` measured in the same round, the
validation AUC and log loss of each training, and what each layout costs in objects.

    deepfake-mlops extract ../shared/datasets/ffpp --out runs/ffpp-faces
    deepfake-mlops extract ../shared/datasets/ffpp --out runs/ffpp-shards --layout shards --shard-mb 2
    .venv/bin/python benchmarks/shards.py --files runs/ffpp-faces --shards runs/ffpp-shards --out benchmarks/results/shards-cpu.json
"""
from __future__ import annotations
import argparse, json, os, platform, shutil, subprocess, sys, tempfile, time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

WAYS = dict(files="files", stream="shards", offset="shards")  # way -> the layout it reads


def _stored(faces:Path) -> dict:
    "Objects an S3 upload of the extraction would hold, and their bytes."
    files = [p for p in faces.rglob("*") if p.is_file()]
    return dict(objects=len(files), mb=round(sum(p.stat().st_size for p in files) / 2**20, 1))


def _rows(faces:Path, split:pd.DataFrame, cfg):
    from deepfake_mlops.data import read_crops
    from deepfake_mlops.train import _train_rows
    return _train_rows(read_crops(faces, split), cfg)


def read_rate(rows:pd.DataFrame, cfg, way:str) -> dict:
    "Images/s of reading one epoch's draws as bytes, nothing decoded: the storage alone."
    from deepfake_mlops.data import ShardCrops
    from deepfake_mlops.shards import read_member
    from deepfake_mlops.train import _epoch_sample
    draws = _epoch_sample(rows, cfg, 0, 0, 1)
    if way == "stream":  # the training stream's own reads, one reader
        stream = ShardCrops(rows, draws, batch=cfg.batch_size, seed=cfg.seed)
        read = lambda: sum(1 for _ in stream._stream(stream.plan[0][0]))
    elif way == "offset":
        spans = list(zip(rows["shard_file"].to_numpy()[draws], rows["offset"].to_numpy()[draws], rows["size"].to_numpy()[draws]))
        read = lambda: sum(1 for shard, offset, size in spans if read_member(shard, int(offset), int(size)))
    else:
        files = rows["crop_file"].to_numpy()[draws]
        read = lambda: sum(1 for f in files if Path(f).read_bytes())
    t = time.perf_counter(); n = read(); s = time.perf_counter() - t
    return dict(images=n, seconds=round(s, 3), images_per_s=round(n / s, 1))


def loader_rate(rows:pd.DataFrame, cfg, epoch:int=0) -> dict:
    "Images/s of one epoch's training DataLoader (reading, decoding, blending, augmenting; no model)."
    from torch.utils.data import DataLoader
    from deepfake_mlops.train import _Proc, _epoch_sample, _items_per_batch, _shard_stream, _streams, _training_set
    dataset = _training_set(rows, cfg)
    if _streams(rows, cfg): batches = _shard_stream(rows, dataset, cfg, epoch, _Proc(0, 1, 0, torch.device("cpu"))).batches()
    else:
        order = _epoch_sample(rows, cfg, epoch, 0, 1)
        batches = DataLoader(torch.utils.data.Subset(dataset, order.tolist()), batch_size=_items_per_batch(cfg),
                             num_workers=cfg.workers, drop_last=True)
    t, n = time.perf_counter(), 0
    for x, _, _ in batches: n += x.shape[0] * (x.shape[1] if x.dim() == 5 else 1)
    s = time.perf_counter() - t
    return dict(images=n, seconds=round(s, 2), images_per_s=round(n / s, 1))


def train_once(faces:Path, out:Path, split:Path, cfg) -> dict:
    "One training in a fresh process (`deepfake-mlops train`): no training inherits the heap and threads of the one before."
    shutil.rmtree(out, ignore_errors=True)
    cli = Path(sys.executable).with_name("deepfake-mlops")
    t = time.perf_counter()
    subprocess.run([str(cli), "train", str(faces), "--out", str(out), "--split", str(split), "--epochs", str(cfg.epochs),
                    "--workers", str(cfg.workers), "--seed", str(cfg.seed), "--shard-reads", cfg.shard_reads],
                   check=True, capture_output=True)
    m = pd.read_csv(out/"metrics.csv")
    return dict(seconds=round(time.perf_counter() - t, 1), images=int(m["images"].sum()), steps=m["steps_per_rank"].astype(str).tolist(),
                images_per_s=round(float(m["images"].sum() / m["train_s"].sum()), 1),
                val_auc=[round(v, 4) for v in m["val_auc"]], val_log_loss=[round(v, 4) for v in m["val_log_loss"]])


def _spread(values) -> dict:
    v = np.asarray(values, float)
    return dict(median=round(float(np.median(v)), 3), min=round(float(v.min()), 3), max=round(float(v.max()), 3))


def main(argv=None) -> int:
    from deepfake_mlops.core import TrainConfig
    from deepfake_mlops.data import split_videos
    from deepfake_mlops.manifest import read_manifest_csv
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--files", type=Path, required=True, help="an extraction folder in the folder layout")
    ap.add_argument("--shards", type=Path, required=True, help="the same videos extracted with --layout shards")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--epochs", type=int, default=1)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--out", type=Path)
    a = ap.parse_args(argv)
    layouts = dict(files=a.files, shards=a.shards)
    work = Path(tempfile.mkdtemp(prefix="deepfake-mlops-shards-"))
    load = os.getloadavg()[0]
    rounds = []
    for r, seed in enumerate(a.seeds):
        split = work/f"split-{seed}.csv"  # one split per seed for every way: the same videos train and validate
        split_videos(read_manifest_csv(a.files/"manifest.csv"), seed=seed).to_csv(split, index=False)
        ways = list(WAYS)[r % 3:] + list(WAYS)[:r % 3]  # each way first once in three seeds
        result = dict(seed=seed, order=ways)
        for way in ways:
            cfg = TrainConfig(epochs=a.epochs, workers=a.workers, seed=seed, shard_reads="offset" if way == "offset" else "stream")
            rows = _rows(layouts[WAYS[way]], pd.read_csv(split, dtype=str), cfg)
            result[way] = dict(read=read_rate(rows, cfg, way), loader=loader_rate(rows, cfg),
                               train=train_once(layouts[WAYS[way]], work/way, split, cfg))
            print(f"seed {seed} {way:6s} read {result[way]['read']['images_per_s']:8.1f} img/s, "
                  f"loader {result[way]['loader']['images_per_s']:6.1f} img/s, training {result[way]['train']['images_per_s']:5.1f} img/s, "
                  f"val AUC {result[way]['train']['val_auc']}", flush=True)
        rounds.append(result)
    summary = {}
    for way in WAYS:
        summary[way] = {f"{k}_images_per_s": _spread([r[way][k]["images_per_s"] for r in rounds]) for k in ("read", "loader", "train")}
        summary[way]["val_auc"] = [r[way]["train"]["val_auc"][-1] for r in rounds]
        summary[way]["val_log_loss"] = [r[way]["train"]["val_log_loss"][-1] for r in rounds]
        summary[way]["val_auc_mean"] = round(float(np.mean(summary[way]["val_auc"])), 4)
        if way != "files":  # each ratio from one round, where both ran minutes apart
            summary[way]["ratio_to_files"] = {k: _spread([r[way][k]["images_per_s"] / r["files"][k]["images_per_s"] for r in rounds])
                                              for k in ("read", "loader", "train")}
    summary["stored"] = {name: _stored(path) for name, path in layouts.items()}
    print(json.dumps(summary, indent=2))
    if a.out:
        cfg = TrainConfig(epochs=a.epochs, workers=a.workers)
        a.out.parent.mkdir(parents=True, exist_ok=True)
        a.out.write_text(json.dumps(dict(machine=f"{platform.machine()}, {os.cpu_count()} cores", load_before=round(load, 2),
                                         load_after=round(os.getloadavg()[0], 2),
                                         config=dict(epochs=a.epochs, workers=a.workers, seeds=a.seeds, batch_size=cfg.batch_size,
                                                     crops_per_video=cfg.crops_per_video, backbone=cfg.backbone, blend=cfg.blend),
                                         summary=summary, rounds=rounds), indent=2))
    shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
