"""Two fixed costs every run pays, each next to its baseline in the same process: building the pipeline
definition, and the bootstrap intervals of an evaluation.

- definition: `pipeline.definition_json` as shipped (the SageMaker SDK's config checked against its schema
  once per build) against the same build with the SDK checking it on every config lookup, as it does by itself.
- bootstrap: `evaluate.bootstrap` (all resamples scored as arrays) against scoring the same resamples one by
  one with `evaluate.binary_metrics`.

The two sides alternate `--rounds` times so that machine noise hits both alike; the load average before and
after is recorded.

    .venv/bin/python benchmarks/overheads.py [--rounds 3] [--videos 68] [--out benchmarks/results/overheads-cpu.json]
"""
import argparse, json, os, platform, time
from pathlib import Path

import numpy as np

from deepfake_mlops import pipeline
from deepfake_mlops.evaluate import binary_metrics, bootstrap

ROLE = "arn:aws:iam::123456789012:role/Bench"

def _seconds(fn) -> float:
    t = time.perf_counter(); fn(); return time.perf_counter() - t

def _build(check_once:bool) -> float:
    once = pipeline._check_config_once
    if not check_once: pipeline._check_config_once = lambda check: check  # the SDK's own behaviour
    try: return _seconds(lambda: pipeline.definition_json("eu-west-1", ROLE, "bench-bucket"))
    finally: pipeline._check_config_once = once

def _resamples(y, n, seed=0):
    "The stratified resamples `bootstrap` draws, for the one-by-one baseline."
    rng = np.random.default_rng(seed)
    real, fake = np.flatnonzero(y == 0), np.flatnonzero(y == 1)
    return [np.concatenate([rng.choice(real, len(real)), rng.choice(fake, len(fake))]) for _ in range(n)]

def main():
    ap = argparse.ArgumentParser(description="definition build and bootstrap, each against its baseline")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--videos", type=int, default=68, help="videos in the evaluated set (FF++ sample: 68)")
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    rng = np.random.default_rng(0)
    y = (rng.random(args.videos) < 0.8).astype(int)
    p = np.clip(0.35 + 0.3 * y + rng.normal(0, 0.2, len(y)), 0, 1)
    _build(True)  # imports the SDK once, outside the timings
    load_before = os.getloadavg()[0]
    times = {k: [] for k in ("definition_once", "definition_sdk", "bootstrap_arrays", "bootstrap_one_by_one")}
    for _ in range(args.rounds):
        times["definition_once"].append(_build(True))
        times["definition_sdk"].append(_build(False))
        times["bootstrap_arrays"].append(_seconds(lambda: bootstrap(y, p, 0.5, 1000)))
        times["bootstrap_one_by_one"].append(_seconds(lambda: [binary_metrics(y[i], p[i], 0.5) for i in _resamples(y, 1000)]))
    med = {k: float(np.median(v)) for k, v in times.items()}
    result = dict(machine=f"{platform.machine()}, {os.cpu_count()} cores", rounds=args.rounds, videos=args.videos,
                  load_before=round(load_before, 2), load_after=round(os.getloadavg()[0], 2),
                  median_s={k: round(v, 3) for k, v in med.items()},
                  definition_speedup=round(med["definition_sdk"] / med["definition_once"], 1),
                  bootstrap_speedup=round(med["bootstrap_one_by_one"] / med["bootstrap_arrays"], 1))
    print(json.dumps(result, indent=2))
    if args.out: args.out.write_text(json.dumps(result, indent=2) + "\n")

if __name__ == "__main__":
    main()
