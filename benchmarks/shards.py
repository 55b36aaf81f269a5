"""Training from tar shards next to training from a JPEG file per crop: the same crops, seed and settings, in one run.

Each round reads one epoch's draws through the training DataLoader alone (decode, self-blend, augment; no model),
then trains for `--epochs` from each layout; rounds alternate the order. Reported: images/s of the loader and of
training (metrics.csv), the validation AUC and log loss of each training, and what the layouts cost in objects.

    deepfake-mlops extract ../shared/datasets/ffpp --out runs/ffpp-faces
    deepfake-mlops extract ../shared/datasets/ffpp --out runs/ffpp-shards --layout shards --shard-mb 2
    .venv/bin/python benchmarks/shards.py --files runs/ffpp-faces --shards runs/ffpp-shards --out benchmarks/results/shards-cpu.json
"""
from __future__ import annotations
import argparse, json, os, platform, shutil, sys, tempfile, time
from pathlib import Path

import numpy as np
import pandas as pd
import torch


def _stored(faces:Path) -> dict:
    "Objects an S3 upload of the extraction would hold, and their bytes."
    files = [p for p in faces.rglob("*") if p.is_file()]
    return dict(objects=len(files), mb=round(sum(p.stat().st_size for p in files) / 2**20, 1))


def loader_rate(faces:Path, split:pd.DataFrame, cfg, epoch:int=0) -> dict:
    "Images/s of one epoch's training DataLoader over `faces` (reading, decoding, blending, augmenting; no model)."
    from torch.utils.data import DataLoader
    from deepfake_mlops.data import read_crops
    from deepfake_mlops.train import _Proc, _epoch_sample, _items_per_batch, _shard_stream, _streams, _train_rows, _training_set
    rows = _train_rows(read_crops(faces, split), cfg)
    dataset = _training_set(rows, cfg)
    if _streams(rows): data = _shard_stream(rows, dataset, cfg, epoch, _Proc(0, 1, 0, torch.device("cpu")))
    else: data = torch.utils.data.Subset(dataset, _epoch_sample(rows, cfg, epoch, 0, 1).tolist())
    loader = DataLoader(data, batch_size=_items_per_batch(cfg), num_workers=cfg.workers)
    t, n = time.perf_counter(), 0
    for x, _, _ in loader: n += x.shape[0] * (x.shape[1] if x.dim() == 5 else 1)
    return dict(images=n, seconds=round(time.perf_counter() - t, 2), images_per_s=round(n / (time.perf_counter() - t), 1))


def train_once(faces:Path, out:Path, split:Path, cfg) -> dict:
    from deepfake_mlops.train import train
    shutil.rmtree(out, ignore_errors=True)
    t = time.perf_counter()
    train(faces, out, cfg, split=split, progress=False)
    m = pd.read_csv(out/"metrics.csv")
    return dict(seconds=round(time.perf_counter() - t, 1), images=int(m["images"].sum()),
                images_per_s=round(float(m["images"].sum() / m["train_s"].sum()), 1),
                val_auc=[round(v, 4) for v in m["val_auc"]], val_log_loss=[round(v, 4) for v in m["val_log_loss"]])


def main(argv=None) -> int:
    from deepfake_mlops.core import TrainConfig
    from deepfake_mlops.data import split_videos
    from deepfake_mlops.manifest import read_manifest_csv
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--files", type=Path, required=True, help="an extraction folder in the folder layout")
    ap.add_argument("--shards", type=Path, required=True, help="the same videos extracted with --layout shards")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--epochs", type=int, default=1)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--out", type=Path)
    a = ap.parse_args(argv)
    cfg = TrainConfig(epochs=a.epochs, workers=a.workers, seed=0)
    work = Path(tempfile.mkdtemp(prefix="deepfake-mlops-shards-"))
    split = work/"split.csv"  # one split for both: the same videos train and validate
    split_videos(read_manifest_csv(a.files/"manifest.csv"), seed=0).to_csv(split, index=False)
    layouts = dict(files=a.files, shards=a.shards)
    rounds = []
    load = os.getloadavg()[0]
    for r in range(a.rounds):
        order = list(layouts) if r % 2 == 0 else list(layouts)[::-1]
        result = {}
        for name in order:
            result[name] = dict(loader=loader_rate(layouts[name], pd.read_csv(split, dtype=str), cfg),
                                train=train_once(layouts[name], work/name, split, cfg))
            print(f"round {r + 1} {name:6s} loader {result[name]['loader']['images_per_s']:7.1f} img/s, "
                  f"training {result[name]['train']['images_per_s']:6.1f} img/s, val AUC {result[name]['train']['val_auc']}", flush=True)
        rounds.append(result)
    summary = {name: dict(loader_images_per_s=float(np.median([r[name]["loader"]["images_per_s"] for r in rounds])),
                          train_images_per_s=float(np.median([r[name]["train"]["images_per_s"] for r in rounds])),
                          stored=_stored(layouts[name])) for name in layouts}
    summary["ratio_shards_over_files"] = dict(
        loader=round(summary["shards"]["loader_images_per_s"] / summary["files"]["loader_images_per_s"], 3),
        train=round(summary["shards"]["train_images_per_s"] / summary["files"]["train_images_per_s"], 3))
    print(json.dumps(summary, indent=2))
    if a.out:
        a.out.parent.mkdir(parents=True, exist_ok=True)
        a.out.write_text(json.dumps(dict(machine=f"{platform.machine()}, {os.cpu_count()} cores", load_before=round(load, 2),
                                         load_after=round(os.getloadavg()[0], 2), config=dict(epochs=a.epochs, workers=a.workers,
                                         batch_size=cfg.batch_size, crops_per_video=cfg.crops_per_video, seed=0),
                                         summary=summary, rounds=rounds), indent=2))
    shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
