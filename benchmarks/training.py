"""Training throughput: the real training loop next to the model's compute ceiling, in one run.

* ceiling: the same model and batch size doing training steps on a batch already in memory
  (`model.throughput(train=True)`), so nothing but forward, backward and the optimizer.
* input pipeline alone: the training DataLoader (JPEG decoding, self-blending, augmentation, batching)
  iterated without a model.
* loop: `train.train` for one epoch on an extraction folder; its own timing of the training part (data
  loading, augmentation, forward/backward, logging) plus the checkpoint write; validation excluded.

    .venv/bin/python benchmarks/training.py --faces runs/ffpp-faces [--device cuda] [--batch-size 32]
"""
import argparse, json, os, platform, shutil, tempfile, time
from pathlib import Path

import pandas as pd
import torch
from torch.utils.data import DataLoader

from deepfake_mlops.data import FaceCrops, read_crops, split_videos, train_augment
from deepfake_mlops.manifest import read_manifest_csv
from deepfake_mlops.model import build_model, throughput
from deepfake_mlops.sbi import self_blend
from deepfake_mlops.train import TrainConfig, train

def input_pipeline(faces, cfg, images):
    "Images per second of the training DataLoader alone."
    crops = read_crops(faces)
    ds = FaceCrops(crops, augment=train_augment(cfg.augment_p), blend=self_blend, blend_prob=cfg.blend_prob)
    loader = DataLoader(torch.utils.data.Subset(ds, list(range(min(images, len(ds))))), batch_size=cfg.batch_size,
                        num_workers=cfg.workers, shuffle=True)
    t, n = time.perf_counter(), 0
    for x, _, _ in loader: n += len(x)
    return n / (time.perf_counter() - t)

def main():
    ap = argparse.ArgumentParser(description="training loop vs compute ceiling")
    ap.add_argument("--faces", type=Path, default=Path("runs/ffpp-faces"))
    ap.add_argument("--backbone", default="mobilenet_v2")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--crops-per-video", type=int, default=8)
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    cfg = TrainConfig(backbone=args.backbone, epochs=1, batch_size=args.batch_size, device=args.device,
                      workers=args.workers, crops_per_video=args.crops_per_video)
    device = torch.device("cuda" if args.device == "cuda" else "cpu")
    model = build_model(args.backbone).to(device)
    ceiling = throughput(model, train=True, batch=args.batch_size, channels_last=True, repeats=5)
    work = Path(tempfile.mkdtemp(prefix="bench-train-"))
    try:
        summary = train(args.faces, work/"model", cfg, progress=False)
        m = pd.read_csv(work/"model"/"metrics.csv").iloc[0]
        loop = m["images"] / (m["train_s"] + m["checkpoint_s"])
        pipeline = input_pipeline(args.faces, cfg, int(m["images"]))
    finally: shutil.rmtree(work, ignore_errors=True)
    result = dict(machine=f"{platform.node()} {os.cpu_count()} cores, torch threads {torch.get_num_threads()}",
                  device=args.device, backbone=args.backbone, batch_size=args.batch_size, workers=args.workers,
                  ceiling_img_s=round(ceiling, 1), loop_img_s=round(float(loop), 1), input_pipeline_img_s=round(pipeline, 1),
                  ratio=round(float(loop) / ceiling, 3), epoch_images=int(m["images"]), train_s=float(m["train_s"]),
                  checkpoint_s=float(m["checkpoint_s"]), validation_s=float(m["val_s"]))
    print(json.dumps(result, indent=2))
    print(f"\n| measure | images/s |\n|---|---|\n| compute ceiling (tensors in memory) | {ceiling:.1f} |\n"
          f"| input pipeline alone ({args.workers} workers) | {pipeline:.1f} |\n| training loop (one epoch) | {loop:.1f} |\n"
          f"\nloop / ceiling: {loop / ceiling:.2f}")
    if args.out: args.out.write_text(json.dumps(result, indent=2))

if __name__ == "__main__":
    main()
