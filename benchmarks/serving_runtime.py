"""Latency under SageMaker's inference toolkit on TorchServe next to `deepfake-mlops serve`, on the same videos.

Serves one model.tar.gz (with code/ inside, as the pipeline's training job writes it) both ways at once,
each with one model worker (one request at a time in both), warms each up, then sends every video of
the dataset to one and then the other, one request in flight at a time, so machine noise hits both alike; `--rounds` repeats the pass. The ratio of the median latencies is the figure; the load
average before and after says how quiet the machine was.

    .venv/bin/python benchmarks/serving_runtime.py --model MODEL.tar.gz --data ../shared/datasets/ffpp \
        [--runtime .venv-sagemaker] [--rounds 1] [--out benchmarks/results/serving-runtime-cpu.json]
"""
import argparse, json, os, platform, socket, subprocess, sys, time, urllib.request
from pathlib import Path

import numpy as np

from deepfake_mlops.manifest import read_manifest
from deepfake_mlops.runtime import find_runtime, serve_toolkit


def _free_port():
    with socket.socket() as s: s.bind(("127.0.0.1", 0)); return s.getsockname()[1]


def _post(url, body):
    t = time.perf_counter()
    req = urllib.request.Request(url + "/invocations", data=body, headers={"Content-Type": "video/mp4"})
    with urllib.request.urlopen(req, timeout=600) as r: answer = json.loads(r.read())
    return time.perf_counter() - t, answer["probability"]


def _own_server(model):
    port = _free_port()
    proc = subprocess.Popen([str(Path(sys.executable).parent/"deepfake-mlops"), "serve", str(model), "--port", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    for _ in range(600):
        try: urllib.request.urlopen(url + "/ping", timeout=1).read(); return proc, url
        except OSError: time.sleep(0.2)
    proc.kill()
    raise RuntimeError("deepfake-mlops serve did not start")


def main():
    ap = argparse.ArgumentParser(description="TorchServe + SageMaker inference toolkit latency vs deepfake-mlops serve")
    ap.add_argument("--model", type=Path, required=True, help="a model.tar.gz the pipeline registered")
    ap.add_argument("--data", type=Path, default=Path("../shared/datasets/ffpp"))
    ap.add_argument("--runtime", type=Path, default=None)
    ap.add_argument("--rounds", type=int, default=1)
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    bodies = [Path(p).read_bytes() for p in read_manifest(args.data)["path"]]
    runtime = find_runtime(args.runtime)
    own, own_url = _own_server(args.model)
    try:
        with serve_toolkit(args.model, runtime, port=_free_port(), environment={"SAGEMAKER_MODEL_SERVER_WORKERS": "1"}) as ts:
            _post(ts.url, bodies[0]); _post(own_url, bodies[0])  # warm-up: the toolkit loads the model at the first request
            load_before = os.getloadavg()[0]
            toolkit, serve, gaps = [], [], []
            for body in bodies * args.rounds:
                (a, pa), (b, pb) = _post(ts.url, body), _post(own_url, body)
                toolkit.append(a); serve.append(b); gaps.append(abs(pa - pb))
            load_after = os.getloadavg()[0]
    finally:
        own.terminate(); own.wait(10)
    t, s = np.array(toolkit), np.array(serve)
    result = dict(machine=f"{platform.machine()}, {os.cpu_count()} cores", runtime=runtime.name, videos=len(bodies), rounds=args.rounds,
                  toolkit_median_s=round(float(np.median(t)), 3), serve_median_s=round(float(np.median(s)), 3),
                  ratio_median=round(float(np.median(t) / np.median(s)), 3), ratio_mean=round(float(t.mean() / s.mean()), 3),
                  max_probability_gap=round(float(max(gaps)), 6), load_before=round(load_before, 2), load_after=round(load_after, 2))
    print(json.dumps(result, indent=2))
    if args.out: args.out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
