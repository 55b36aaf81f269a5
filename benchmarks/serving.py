"""Serving latency next to decoding the same frames alone, and throughput with concurrent clients.

Starts `deepfake-mlops serve MODEL` in its own process, then for every video of a dataset (one at a
time, alternating so machine noise hits both alike): the time to decode the frames the model looks at
(`video.sample_frames`, in this process), and the latency of `POST /invocations` with the video as the
body; `--rounds` repeats that pass. Then the same videos are sent by `--clients` concurrent clients to
measure throughput. The load average before and after is recorded: the ratio is only as good as the
machine was quiet.

    .venv/bin/python benchmarks/serving.py --model runs/model --data ../shared/datasets/ffpp [--clients 4] [--rounds 1]
"""
import argparse, json, os, platform, socket, subprocess, sys, time, urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from deepfake_mlops.manifest import read_manifest
from deepfake_mlops.video import sample_frames

def _free_port():
    with socket.socket() as s: s.bind(("127.0.0.1", 0)); return s.getsockname()[1]

def _post(url, path):
    body = Path(path).read_bytes()
    t = time.perf_counter()
    req = urllib.request.Request(url + "/invocations", data=body, headers={"Content-Type": "video/mp4"})
    with urllib.request.urlopen(req, timeout=600) as r: r.read()
    return time.perf_counter() - t

def main():
    ap = argparse.ArgumentParser(description="serving latency vs decode-only, and concurrent throughput")
    ap.add_argument("--model", type=Path, default=Path("runs/model"))
    ap.add_argument("--data", type=Path, default=Path("../shared/datasets/ffpp"))
    ap.add_argument("--clients", type=int, default=4)
    ap.add_argument("--rounds", type=int, default=1, help="passes over the videos (decode and serve alternate in each)")
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    paths = read_manifest(args.data)["path"].tolist()
    port = _free_port()
    server = subprocess.Popen([str(Path(sys.executable).parent/"deepfake-mlops"), "serve", str(args.model), "--port", str(port)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(600):
            try: urllib.request.urlopen(url + "/ping", timeout=1).read(); break
            except OSError: time.sleep(0.2)
        _post(url, paths[0])  # warm-up
        load_before = os.getloadavg()[0]
        decode, serve = [], []
        for p in paths * args.rounds:
            t = time.perf_counter(); sample_frames(p); decode.append(time.perf_counter() - t)
            serve.append(_post(url, p))
        t = time.perf_counter()
        with ThreadPoolExecutor(args.clients) as pool: list(pool.map(lambda p: _post(url, p), paths))
        concurrent_s = time.perf_counter() - t
        load_after = os.getloadavg()[0]
    finally:
        server.terminate(); server.wait(10)
    d, s = np.array(decode), np.array(serve)
    result = dict(machine=f"{platform.node()} {os.cpu_count()} cores", data=str(args.data), videos=len(paths), rounds=args.rounds,
                  load_avg_1m_before=round(load_before, 2), load_avg_1m_after=round(load_after, 2),
                  decode_p50_s=round(float(np.median(d)), 3), decode_p95_s=round(float(np.percentile(d, 95)), 3),
                  serve_p50_s=round(float(np.median(s)), 3), serve_p95_s=round(float(np.percentile(s, 95)), 3),
                  ratio_p50=round(float(np.median(s) / np.median(d)), 3), ratio_total=round(float(s.sum() / d.sum()), 3),
                  clients=args.clients, concurrent_videos_per_s=round(len(paths) / concurrent_s, 3),
                  sequential_videos_per_s=round(len(paths) / s.sum(), 3))
    print(json.dumps(result, indent=2))
    if args.out: args.out.write_text(json.dumps(result, indent=2))

if __name__ == "__main__":
    main()
