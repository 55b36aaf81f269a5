"""The latency cost of data capture on `POST /invocations`: the same model served with and without `--capture`.

Starts `deepfake-mlops serve MODEL` twice in their own processes, one with `--capture` into a temporary
folder, and posts every video of a dataset to one and then the other, alternating which goes first
from video to video, so that machine noise hits both alike; `--rounds` repeats the pass. The client's
latency is measured (upload to answer read): capture writes its line after answering, so what the
client can lose is the time the writer holds the request's thread and the CPU it takes from the model.
The load average before and after is recorded: the ratio is only as good as the machine was quiet.

    .venv/bin/python benchmarks/capture.py --model runs/model --data ../shared/datasets/ffpp [--rounds 3]
"""
import argparse, json, os, platform, socket, subprocess, sys, tempfile, time, urllib.request
from pathlib import Path

import numpy as np

from deepfake_mlops.manifest import read_manifest

def _free_port():
    with socket.socket() as s: s.bind(("127.0.0.1", 0)); return s.getsockname()[1]

def _post(url, body):
    t = time.perf_counter()
    req = urllib.request.Request(url + "/invocations", data=body, headers={"Content-Type": "video/mp4"})
    with urllib.request.urlopen(req, timeout=600) as r: r.read()
    return time.perf_counter() - t

def _start(model, args=()):
    port = _free_port()
    proc = subprocess.Popen([str(Path(sys.executable).parent/"deepfake-mlops"), "serve", str(model), "--port", str(port), *args],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    for _ in range(600):
        try: urllib.request.urlopen(url + "/ping", timeout=1).read(); return proc, url
        except OSError: time.sleep(0.2)
    raise RuntimeError(f"deepfake-mlops serve {model} did not answer /ping")

def main():
    ap = argparse.ArgumentParser(description="/invocations latency with and without --capture")
    ap.add_argument("--model", type=Path, default=Path("runs/model"))
    ap.add_argument("--data", type=Path, default=Path("../shared/datasets/ffpp"))
    ap.add_argument("--rounds", type=int, default=3, help="passes over the videos")
    ap.add_argument("--videos", type=int, default=0, help="only the first N videos of the dataset (0: all)")
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    paths = read_manifest(args.data)["path"].tolist()
    paths = paths[:args.videos] if args.videos else paths
    bodies = [Path(p).read_bytes() for p in paths]  # read once: the disk is not what is measured
    with tempfile.TemporaryDirectory() as folder:
        plain, plain_url = _start(args.model)
        captured, capture_url = _start(args.model, ("--capture", folder))
        try:
            for url in (plain_url, capture_url): _post(url, bodies[0])  # warm-up
            load_before = os.getloadavg()[0]
            times = {"plain": [], "capture": []}
            for i, body in enumerate(bodies * args.rounds):
                order = [("plain", plain_url), ("capture", capture_url)]
                for name, url in order if i % 2 == 0 else order[::-1]: times[name].append(_post(url, body))
            load_after = os.getloadavg()[0]
        finally:
            for proc in (plain, captured): proc.terminate(); proc.wait(10)
        lines = sum(len(f.read_text().splitlines()) for f in Path(folder).rglob("*.jsonl"))
    p, c = np.array(times["plain"]), np.array(times["capture"])
    result = dict(machine=f"{platform.machine()} {os.cpu_count()} cores, Python {platform.python_version()}", data=str(args.data),
                  videos=len(paths), rounds=args.rounds, capture_lines=lines,
                  load_avg_1m_before=round(load_before, 2), load_avg_1m_after=round(load_after, 2),
                  plain_p50_s=round(float(np.median(p)), 4), capture_p50_s=round(float(np.median(c)), 4),
                  plain_p95_s=round(float(np.percentile(p, 95)), 4), capture_p95_s=round(float(np.percentile(c, 95)), 4),
                  ratio_p50=round(float(np.median(c) / np.median(p)), 3), ratio_total=round(float(c.sum() / p.sum()), 3),
                  ratio_p50_of_pairs=round(float(np.median(c / p)), 3))
    print(json.dumps(result, indent=2))
    if args.out: args.out.write_text(json.dumps(result, indent=2) + "\n")

if __name__ == "__main__":
    main()
