"""What reading each frame's quantiser costs: `video.iter_frames` with and without it, on the same videos.

`Frame.qp` asks FFmpeg to export every decoded frame's encoding parameters and reads the mean quantiser of
each sampled frame (`video.frame_qp`). This samples every video of a dataset as extraction and serving do,
once with that and once with both turned into no-ops, alternating which goes first from video to video so
that machine noise hits both alike.

    .venv/bin/python benchmarks/quantiser.py --data ../shared/datasets/ffpp [--frames 32] [--rounds 1]
"""
import argparse, os, platform, time
from pathlib import Path

import numpy as np

from deepfake_mlops import video
from deepfake_mlops.manifest import read_manifest

def _sample(path, frames:int, qp:bool) -> float:
    export, read = video._export_qp, video.frame_qp
    if not qp: video._export_qp, video.frame_qp = (lambda s: None), (lambda f: None)
    try:
        t = time.perf_counter()
        got = list(video.iter_frames(path, frames))
        seconds = time.perf_counter() - t
    finally: video._export_qp, video.frame_qp = export, read
    assert all((f.qp is not None) == qp for f in got), path
    return seconds

def main():
    ap = argparse.ArgumentParser(description="iter_frames with and without each frame's quantiser")
    ap.add_argument("--data", type=Path, default=Path("../shared/datasets/ffpp"))
    ap.add_argument("--frames", type=int, default=32)
    ap.add_argument("--rounds", type=int, default=1)
    a = ap.parse_args()
    paths = list(read_manifest(a.data)["path"])
    with_qp, without = [], []
    for r in range(a.rounds):
        for i, p in enumerate(paths):
            order = (True, False) if (i + r) % 2 == 0 else (False, True)
            for qp in order: (with_qp if qp else without).append(_sample(p, a.frames, qp))
    w, wo = np.array(with_qp), np.array(without)
    print(f"{platform.node()}: {os.cpu_count()} CPUs, {len(paths)} videos x {a.rounds} round(s), {a.frames} frames each")
    print(f"without qp: {wo.sum():.1f} s in all, median {np.median(wo) * 1000:.0f} ms a video")
    print(f"with qp:    {w.sum():.1f} s in all, median {np.median(w) * 1000:.0f} ms a video")
    print(f"ratio with/without: total {w.sum() / wo.sum():.3f}, median of per-video ratios {np.median(w / wo):.3f}")

if __name__ == "__main__":
    main()
