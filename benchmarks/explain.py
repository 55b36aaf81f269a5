"""What a verdict's heat maps cost: the same videos judged with and without `explain`, in one process.

For every video of a dataset, alternating so that machine noise hits both alike: the verdict alone
(`DeepfakeDetector.predict_video(path)`), then the verdict with the heat maps of its N most suspicious
faces (`explain=N`: Grad-CAM's forward and backward pass over those crops, the overlays, PNG and base64).
Also the size of the heat maps in the answer. `--rounds` repeats the pass; the first video of the first
round warms up and is not counted.

    .venv/bin/python benchmarks/explain.py --model MODEL --data ../shared/datasets/ffpp [--explain 4] [--rounds 1] [--out FILE]
"""
import argparse, json, os, platform, time
from pathlib import Path

import numpy as np
import torch

from deepfake_mlops.inference import DeepfakeDetector, unpacked
from deepfake_mlops.manifest import read_manifest


def _timed(fn):
    t = time.perf_counter()
    out = fn()
    return time.perf_counter() - t, out


def main():
    ap = argparse.ArgumentParser(description="verdict latency with and without heat maps")
    ap.add_argument("--model", type=Path, required=True, help="a model folder or model.tar.gz")
    ap.add_argument("--data", type=Path, default=Path("../shared/datasets/ffpp"))
    ap.add_argument("--explain", type=int, default=4, help="heat maps per video")
    ap.add_argument("--videos", type=int, default=24, help="videos of the dataset used (the first ones of the manifest)")
    ap.add_argument("--rounds", type=int, default=1)
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    paths = read_manifest(args.data)["path"].tolist()[:args.videos]
    with unpacked(args.model) as folder: detector = DeepfakeDetector(folder)
    detector.predict_video(paths[0], args.explain)  # warm-up: the explainer is built on first use
    load_before = os.getloadavg()[0]
    plain, explained, extra, png_bytes = [], [], [], []
    for p in paths * args.rounds:
        t0, _ = _timed(lambda: detector.predict_video(p))
        t1, v = _timed(lambda: detector.predict_video(p, args.explain))
        plain.append(t0); explained.append(t1); extra.append(t1 - t0)
        png_bytes += [len(e["png"]) * 3 // 4 for e in v["explanations"]]
    load_after = os.getloadavg()[0]
    a, b = np.array(plain), np.array(explained)
    result = dict(machine=f"{platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}", videos=len(paths),
                  rounds=args.rounds, explain=args.explain, verdict_median_s=round(float(np.median(a)), 3),
                  explained_median_s=round(float(np.median(b)), 3), ratio_median=round(float(np.median(b / a)), 3),
                  extra_median_s=round(float(np.median(extra)), 3),
                  extra_per_map_ms=round(float(np.median(extra)) / args.explain * 1000, 1),
                  png_kb_median=round(float(np.median(png_bytes)) / 1000, 1), png_kb_max=round(max(png_bytes) / 1000, 1),
                  load_before=round(load_before, 2), load_after=round(load_after, 2))
    print(json.dumps(result, indent=2))
    if args.out: args.out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
