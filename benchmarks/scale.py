"""What looks at all videos at once, at the size of DFDC: seconds and peak memory on synthetic metadata.

No video and no crop exists: a manifest of N videos and an index of 32 crops per video (the shards layout)
are written as the project writes them, then each step runs in a fresh process, timed once and traced once
(tracemalloc's peak: the memory the step allocates beyond its input). The sizes double, so a cost that grows
as n log n shows as a ratio a little above 2 from one size to the next. The fingerprint steps time the local
engine's cache key of a step whose input is the extraction: over the crops as files (empty ones, a folder per
video, made once per size), next to the earlier way of listing and sorting every path first, and over the shards.

    .venv/bin/python benchmarks/scale.py --sizes 15000 30000 60000 120000 --out benchmarks/results/scale-cpu.json
"""
from __future__ import annotations
import argparse, json, os, platform, subprocess, sys, tempfile, time, tracemalloc
from pathlib import Path

import numpy as np
import pandas as pd

CROPS_PER_VIDEO = 32
SHARD_CROPS = 17_000  # about 256 MB of 15 kB crops
STEPS = ("manifest", "split", "folds", "index", "crops", "plan", "fingerprint_files", "fingerprint_sorted", "fingerprint_shards")


def synthetic_manifest(n:int, seed:int=0) -> pd.DataFrame:
    "N videos shaped like DFDC: one real video in six, each fake of a real one with a face from the same group of 4 actors."
    rng = np.random.default_rng(seed)
    real = n // 6
    actors = max(4, real // 7)
    actor_of = rng.integers(0, actors, real)
    rows = [dict(video_id=f"dfdc_train_part_{i % 50}__r{i:07d}", label="REAL", method="original", identities=f"dfdc:a{a:05d}")
            for i, a in enumerate(actor_of)]
    for j in range(n - real):
        orig = int(rng.integers(real))
        target = actor_of[orig]
        source = (target // 4) * 4 + int(rng.integers(4))  # actors are swapped within groups of 4, as DFDC paired its subjects
        ids = sorted({f"dfdc:a{target:05d}", f"dfdc:a{min(source, actors - 1):05d}"})
        rows.append(dict(video_id=f"dfdc_train_part_{j % 50}__f{j:07d}", label="FAKE", method="DFDC", identities=";".join(ids)))
    df = pd.DataFrame(rows)
    df["relpath"] = df["video_id"].str.replace("__", "/") + ".mp4"
    df["path"] = "/data/" + df["relpath"]
    df["group"] = df["identities"].str.split(";").str[0]
    df["dataset"], df["split"] = "dfdc", ""
    return df


def synthetic_index(manifest:pd.DataFrame, seed:int=0) -> pd.DataFrame:
    "32 crops per video in the shards layout, with the columns and number formats extraction writes."
    from deepfake_mlops.faces import INDEX_COLUMNS, SHARD_COLUMNS, VIDEO_META
    rng = np.random.default_rng(seed)
    n = len(manifest) * CROPS_PER_VIDEO
    rep = manifest.loc[manifest.index.repeat(CROPS_PER_VIDEO), VIDEO_META].reset_index(drop=True)
    frame = np.tile(np.arange(CROPS_PER_VIDEO) * 9, len(manifest))
    x0 = rng.uniform(100, 900, n).round(1)
    y0 = rng.uniform(50, 500, n).round(1)
    side = rng.uniform(80, 300, n).round(1)
    kps = [json.dumps([[round(a + side_ * f, 1), round(b + side_ * f, 1)] for f in (0.3, 0.7, 0.5, 0.5, 0.1, 0.9)])
           for a, b, side_ in zip(x0[:1000], y0[:1000], side[:1000])]
    size = rng.integers(9_000, 20_000, n)
    idx = pd.DataFrame(dict(frame_index=frame, timestamp=(frame / 30).round(3), face=0, track=0, main=True,
                            score=rng.uniform(0.6, 1, n).round(4), x0=x0, y0=y0, x1=x0 + side, y1=y0 + side,
                            keypoints=[kps[i % 1000] for i in range(n)],
                            crop_path=["crops/" + v + f"/{f:06d}.jpg" for v, f in zip(rep["video_id"], frame)],
                            shard=[f"shards/algo-1-{k // SHARD_CROPS + 1:06d}.tar" for k in range(n)],
                            offset=np.cumsum(size) % (256 << 20), size=size,
                            landmarks_offset=np.nan, landmarks_size=np.nan))  # no landmarks: nothing in the empty shards to read
    return pd.concat([rep, idx], axis=1)[INDEX_COLUMNS + SHARD_COLUMNS]


def prepare(n:int, root:Path):
    "The files every step reads: manifest.csv, faces.csv, extraction.json (and an empty shard per shard named)."
    from deepfake_mlops.manifest import write_manifest
    folder = root/f"n{n}"
    if (folder/"faces.csv").exists(): return folder
    (folder/"shards").mkdir(parents=True, exist_ok=True)
    manifest = synthetic_manifest(n)
    write_manifest(manifest, folder/"manifest.csv")
    index = synthetic_index(manifest)
    for shard in index["shard"].unique(): (folder/shard).touch()
    index.to_csv(folder/"faces.csv", index=False)
    (folder/"extraction.json").write_text(json.dumps(dict(frames=32, face_size=224, margin=0.3, detector="auto", landmarks=True, layout="shards")))
    return folder


def crop_files(folder:Path) -> Path:
    "The crops of the index as empty files in the folder layout (a folder per video): what the local engine's cache key walks."
    tree = folder/"crop-files"
    if (tree/".done").exists(): return tree
    index = pd.read_csv(folder/"faces.csv", usecols=["crop_path"])["crop_path"]
    for video, names in index.groupby(index.str.rsplit("/", n=1).str[0]):
        (tree/video).mkdir(parents=True, exist_ok=True)
        for name in names: (tree/name).touch()
    (tree/".done").touch()
    return tree


def _sorted_fingerprint(path:Path) -> str:
    "The earlier cache fingerprint, the baseline: every file's path listed and sorted, then hashed."
    import hashlib
    h = hashlib.sha256()
    for p in sorted(p for p in path.rglob("*") if p.is_file()):
        st = p.stat()
        h.update(f"{p.relative_to(path)}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return h.hexdigest()


def _step(name:str, folder:Path):
    "A callable that runs one step on the prepared folder (its inputs read beforehand, outside the measure)."
    from deepfake_mlops.manifest import read_manifest_csv
    if name.startswith("fingerprint"):  # the local engine's cache key of a step whose input is the extraction
        from deepfake_mlops.jobs import _fingerprint
        if name == "fingerprint_shards": return lambda: _fingerprint(folder/"shards")
        return lambda: (_fingerprint if name == "fingerprint_files" else _sorted_fingerprint)(folder/"crop-files")
    if name == "manifest": return lambda: read_manifest_csv(folder/"manifest.csv")
    manifest = read_manifest_csv(folder/"manifest.csv")
    if name == "split":
        from deepfake_mlops.data import split_videos
        return lambda: split_videos(manifest, seed=0)
    if name == "folds":
        from deepfake_mlops.crossval import identity_folds
        return lambda: identity_folds(manifest, 5, seed=0)
    if name == "index":
        from deepfake_mlops.faces import read_index
        return lambda: read_index(folder)
    from deepfake_mlops.data import read_crops, split_videos
    split = split_videos(manifest, seed=0)
    if name == "crops": return lambda: read_crops(folder, split)
    from deepfake_mlops.core import TrainConfig
    from deepfake_mlops.data import stream_plan
    from deepfake_mlops.train import _epoch_sample, _train_rows
    cfg = TrainConfig()
    rows = _train_rows(read_crops(folder, split), cfg)
    # 8 instances x 4 DataLoader workers read the shards; each epoch draws crops_per_video crops of every video
    return lambda: stream_plan(rows["shard_file"].to_numpy(), _epoch_sample(rows, cfg, 0, 0, 1), 8, 4, cfg.batch_size, 0)


def measure(name:str, folder:Path) -> dict:
    "Seconds of one run, then the traced peak of another."
    step = _step(name, folder)
    t = time.perf_counter(); step(); seconds = time.perf_counter() - t
    tracemalloc.start(); step(); peak = tracemalloc.get_traced_memory()[1]; tracemalloc.stop()
    return dict(seconds=round(seconds, 3), peak_mb=round(peak / 2**20, 1))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[15_000, 30_000, 60_000, 120_000])
    ap.add_argument("--steps", nargs="+", default=list(STEPS), choices=STEPS)
    ap.add_argument("--root", type=Path, default=Path(tempfile.gettempdir())/"deepfake-mlops-scale")
    ap.add_argument("--out", type=Path)
    ap.add_argument("--one", nargs=2, metavar=("STEP", "FOLDER"), help=argparse.SUPPRESS)  # a child process's single measure
    a = ap.parse_args(argv)
    if a.one:
        print(json.dumps(measure(a.one[0], Path(a.one[1]))))
        return 0
    rows = []
    for n in a.sizes:
        t = time.perf_counter(); folder = prepare(n, a.root)
        if any(s in a.steps for s in ("fingerprint_files", "fingerprint_sorted")): crop_files(folder)
        print(f"{n} videos, {n * CROPS_PER_VIDEO:,} crops: data ready in {time.perf_counter() - t:.0f} s", flush=True)
        for name in a.steps:
            proc = subprocess.run([sys.executable, __file__, "--one", name, str(folder)], capture_output=True, text=True)
            if proc.returncode: raise SystemExit(f"{name} at {n}: {proc.stderr[-2000:]}")
            r = dict(step=name, videos=n, crops=n * CROPS_PER_VIDEO, **json.loads(proc.stdout.splitlines()[-1]))
            rows.append(r)
            print(f"  {name:9s} {r['seconds']:8.2f} s  {r['peak_mb']:8.1f} MB", flush=True)
    table = pd.DataFrame(rows)
    table["time_ratio"] = table.groupby("step")["seconds"].transform(lambda s: s / s.shift())
    print(table.to_string(index=False))
    if a.out:
        a.out.parent.mkdir(parents=True, exist_ok=True)
        a.out.write_text(json.dumps(dict(machine=f"{platform.machine()}, {os.cpu_count()} cores", python=platform.python_version(),
                                         crops_per_video=CROPS_PER_VIDEO, results=json.loads(table.to_json(orient="records"))), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
