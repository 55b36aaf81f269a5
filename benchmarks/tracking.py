"""What MLflow tracking adds to training, side by side in one run.

The same training (same crops, seed and settings) runs with DEEPFAKE_MLOPS_TRACKING=off and with tracking into a
fresh local store (SQLite, as `make run` tracks), rounds alternating (off, on, off, on ...) so that machine noise hits
both alike. Compared: the epoch loop's time (`loop_s` in train.json: training, validation, checkpoints and, when
tracking, each epoch's logging) and the whole call's wall time (which adds opening the store and logging the model).
On a small dataset the loops differ by less than the machine's noise, so the cost of one epoch's logging is also
timed directly (the same metrics, 50 times, into a local store) and set against the epoch's time.

    .venv/bin/python benchmarks/tracking.py --faces FACES_DIR [--epochs 3] [--rounds 3] [--out results/tracking-cpu.json]

Without --faces, the demo clips are rendered and extracted first (not timed).
"""
import argparse, json, os, platform, statistics, tempfile, time
from pathlib import Path

from deepfake_mlops.core import TrainConfig


def _demo_faces(work:Path) -> Path:
    from deepfake_mlops.demo import render_demo_clips
    from deepfake_mlops.faces import extract_faces
    from deepfake_mlops.manifest import read_manifest
    extract_faces(read_manifest(render_demo_clips(work/"clips", n_real=6, n_fake=6)), work/"faces", frames=8, workers=1, progress=False)
    return work/"faces"


def one_training(faces:Path, cfg:TrainConfig, tracked:bool, work:Path) -> dict:
    "Seconds of the epoch loop and of the whole call, for one training with or without tracking."
    from deepfake_mlops.train import train
    os.environ["DEEPFAKE_MLOPS_TRACKING"] = "on" if tracked else "off"
    os.environ["DEEPFAKE_MLOPS_LOCAL_ROOT"] = str(work/"store")  # a fresh local store per tracked round
    start = time.perf_counter()
    summary = train(faces, work/"model", cfg, progress=False)
    return dict(loop_s=summary["loop_s"], call_s=time.perf_counter() - start, run=summary["mlflow_run_id"])


def logging_cost(work:Path, epochs:int=50) -> float:
    "Seconds one epoch's logging takes (the metrics `train` logs per epoch, into a local store), median of `epochs` calls."
    from deepfake_mlops.tracking import start_run
    from deepfake_mlops.train import _TRACKED
    os.environ["DEEPFAKE_MLOPS_TRACKING"] = "on"
    run = start_run("logging-cost", root=work)
    times = []
    for epoch in range(1, epochs + 1):
        t = time.perf_counter()
        run.metrics({k: 0.5 for k in _TRACKED}, step=epoch)
        times.append(time.perf_counter() - t)
    run.end()
    return statistics.median(times)


def main():
    ap = argparse.ArgumentParser(description="training with and without MLflow tracking")
    ap.add_argument("--faces", type=Path, help="an extraction folder (default: the demo clips, extracted first)")
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    os.environ.pop("MLFLOW_TRACKING_URI", None)
    faces = args.faces or _demo_faces(Path(tempfile.mkdtemp(prefix="bench-tracking-")))
    cfg = TrainConfig(epochs=args.epochs, batch_size=args.batch_size, workers=0, patience=args.epochs)
    sides = {"off": [], "on": []}
    for r in range(args.rounds):
        for side in ("off", "on"):
            sides[side].append(one_training(faces, cfg, side == "on", Path(tempfile.mkdtemp(prefix=f"bench-{side}-"))))
        print(f"round {r + 1}: loop off {sides['off'][-1]['loop_s']:.1f} s, on {sides['on'][-1]['loop_s']:.1f} s; "
              f"call off {sides['off'][-1]['call_s']:.1f} s, on {sides['on'][-1]['call_s']:.1f} s", flush=True)
    assert all(x["run"] is None for x in sides["off"]) and all(x["run"] for x in sides["on"])
    med = {side: {k: statistics.median(x[k] for x in runs) for k in ("loop_s", "call_s")} for side, runs in sides.items()}
    per_epoch_log_s = logging_cost(Path(tempfile.mkdtemp(prefix="bench-logging-")))
    per_epoch_s = med["off"]["loop_s"] / args.epochs
    result = dict(machine=f"{platform.node()} {os.cpu_count()} cores {platform.processor() or platform.machine()}",
                  faces=str(faces), epochs=args.epochs, batch_size=args.batch_size, rounds=args.rounds,
                  loop_s_off=round(med["off"]["loop_s"], 2), loop_s_on=round(med["on"]["loop_s"], 2),
                  loop_ratio=round(med["on"]["loop_s"] / med["off"]["loop_s"], 3),
                  call_s_off=round(med["off"]["call_s"], 2), call_s_on=round(med["on"]["call_s"], 2),
                  call_ratio=round(med["on"]["call_s"] / med["off"]["call_s"], 3),
                  per_epoch_s=round(per_epoch_s, 3), per_epoch_logging_s=round(per_epoch_log_s, 4),
                  logging_share_of_epoch=round(per_epoch_log_s / per_epoch_s, 4),
                  rounds_detail=sides)
    print(json.dumps({k: v for k, v in result.items() if k != "rounds_detail"}, indent=2))
    if args.out: args.out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
