"""Face extraction throughput next to decoding the same frames alone, in one run.

Both sides use the same layout: the videos of a dataset spread over `--workers` processes started the same way,
one decoder thread each, 32 frames sampled per video with `video.sample_frames` (reference frames only).
The decode-only side stops there; extraction also detects, tracks, crops and writes JPEGs and the index.
Rounds alternate (decode, extract, decode, extract ...) so that machine noise hits both sides alike;
the best round of each side is compared.

    .venv/bin/python benchmarks/extraction.py --data ../shared/datasets/ffpp [--device cuda] [--rounds 2]
"""
import argparse, json, os, platform, shutil, tempfile, time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

from deepfake_mlops.faces import extract_faces, pool_context
from deepfake_mlops.manifest import read_manifest
from deepfake_mlops.video import sample_frames

def _decode(path, frames):
    return len(sample_frames(path, frames, threads=1))

def decode_only(paths, frames, workers, device):
    "Seconds and frames to decode the sampled frames of every video, in worker processes."
    start = time.perf_counter()
    with ProcessPoolExecutor(workers, mp_context=pool_context(device)) as pool:
        n = sum(pool.map(_decode, paths, [frames] * len(paths)))
    return time.perf_counter() - start, n

def extraction(manifest, frames, workers, device):
    "Seconds and frames of a full extraction into a fresh folder."
    out = Path(tempfile.mkdtemp(prefix="bench-faces-"))
    try:
        start = time.perf_counter()
        s = extract_faces(manifest, out, frames=frames, workers=workers, device=device, progress=False)
        seconds = time.perf_counter() - start
        return seconds, s["frames"], s["face_rate"], s["failed"]
    finally: shutil.rmtree(out, ignore_errors=True)

def main():
    ap = argparse.ArgumentParser(description="extraction vs decode-only throughput")
    ap.add_argument("--data", type=Path, default=Path("../shared/datasets/ffpp"))
    ap.add_argument("--frames", type=int, default=32)
    ap.add_argument("--workers", type=int, default=os.cpu_count())
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--out", type=Path, help="write the results as JSON here")
    args = ap.parse_args()
    manifest = read_manifest(args.data)
    paths = manifest["path"].tolist()
    decode, extract = [], []
    for r in range(args.rounds):
        decode.append(decode_only(paths, args.frames, args.workers, args.device))
        extract.append(extraction(manifest, args.frames, args.workers, args.device))
        print(f"round {r + 1}: decode-only {decode[-1][0]:.1f} s, extraction {extract[-1][0]:.1f} s", flush=True)
    d_s, d_frames = min(decode)
    e_s, e_frames, face_rate, failed = min(extract)
    n = len(paths)
    result = dict(machine=f"{platform.node()} {os.cpu_count()} cores {platform.processor() or platform.machine()}",
                  data=str(args.data), videos=n, frames_per_video=args.frames, workers=args.workers, device=args.device,
                  decode_s=round(d_s, 2), decode_videos_per_s=round(n / d_s, 3), decode_frames_per_s=round(d_frames / d_s, 1),
                  extract_s=round(e_s, 2), extract_videos_per_s=round(n / e_s, 3), extract_frames_per_s=round(e_frames / e_s, 1),
                  ratio=round(d_s / e_s, 3), face_rate=face_rate, failed=failed,
                  rounds=dict(decode_s=[round(x[0], 2) for x in decode], extract_s=[round(x[0], 2) for x in extract]))
    print(json.dumps(result, indent=2))
    print(f"\n| side | seconds | videos/s | frames/s |\n|---|---|---|---|\n"
          f"| decode only | {d_s:.1f} | {n / d_s:.2f} | {d_frames / d_s:.0f} |\n"
          f"| extraction ({args.device}) | {e_s:.1f} | {n / e_s:.2f} | {e_frames / e_s:.0f} |\n"
          f"\nextraction / decode-only throughput: {d_s / e_s:.2f} (target >= 0.8); faces in {face_rate:.1%} of frames")
    if args.out: args.out.write_text(json.dumps(result, indent=2))

if __name__ == "__main__":
    main()
