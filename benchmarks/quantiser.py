"""What a video's quantiser costs: `video.video_qp` (its own single-threaded pass over the first reference frames)
next to `video.iter_frames`, the sampling that extraction and serving do anyway, on the same videos.

Every video of a dataset, alternating which of the two runs first from video to video so that machine noise
hits both alike; the ratio is (sampling + video_qp) / sampling.

    .venv/bin/python benchmarks/quantiser.py --data ../shared/datasets/ffpp [--frames 32] [--rounds 1]
"""
import argparse, os, platform, time
from pathlib import Path

import numpy as np

from deepfake_mlops.manifest import read_manifest
from deepfake_mlops.video import iter_frames, video_qp

def _timed(fn) -> float:
    t = time.perf_counter(); fn(); return time.perf_counter() - t

def main():
    ap = argparse.ArgumentParser(description="video_qp next to sampling a video's frames")
    ap.add_argument("--data", type=Path, default=Path("../shared/datasets/ffpp"))
    ap.add_argument("--frames", type=int, default=32, help="frames sampled (the extraction default)")
    ap.add_argument("--rounds", type=int, default=1)
    a = ap.parse_args()
    paths = list(read_manifest(a.data)["path"])
    sampling, qp = [], []
    for r in range(a.rounds):
        for i, p in enumerate(paths):
            jobs = [(sampling, lambda: list(iter_frames(p, a.frames))), (qp, lambda: video_qp(p))]
            for times, fn in (jobs if (i + r) % 2 == 0 else jobs[::-1]): times.append(_timed(fn))
    s, q = np.array(sampling), np.array(qp)
    print(f"{platform.node()}: {os.cpu_count()} CPUs, {len(paths)} videos x {a.rounds} round(s), {a.frames} frames sampled")
    print(f"sampling:  {s.sum():.1f} s in all, median {np.median(s) * 1000:.0f} ms a video")
    print(f"video_qp:  {q.sum():.1f} s in all, median {np.median(q) * 1000:.0f} ms a video")
    print(f"(sampling + video_qp) / sampling: total {(s.sum() + q.sum()) / s.sum():.3f}, median per video {np.median((s + q) / s):.3f}")

if __name__ == "__main__":
    main()
