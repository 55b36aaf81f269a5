"""What the monitor says of real captures: a model trained on the FF++ sample, served with `--capture`, posted its
test videos as they are, re-encoded at H.264 CRF 35, downscaled to 360p, and the DFDC sample; `monitor` on each.

Prints one markdown row per capture: the window's median of each statistic with its PSI, KS p-value and the
share beyond the baseline's range on the watched side, and the statistics that raised the alarm
(the table of nbs/12b_monitor.ipynb).

    .venv/bin/python benchmarks/drift.py --data ../shared/datasets [--preset veryfast] [--work DIR]
"""
import argparse, json, os, platform, subprocess, sys, tempfile, time
from pathlib import Path

import pandas as pd

from capture import _post, _start  # the capture benchmark's server start and request

CLI = str(Path(sys.executable).parent/"deepfake-mlops")
VERSION = "drift-1"

def _run(*args, ok=(0,)):
    "Run the CLI; `ok`: the exit statuses that are results (monitor's 1 is an alarm, extract's 1 a failed video)."
    proc = subprocess.run([CLI, *map(str, args)], capture_output=True, text=True)
    if proc.returncode not in ok: sys.exit(f"deepfake-mlops {' '.join(map(str, args))} failed:\n{proc.stderr[-2000:]}")
    return proc

def _capture(tar, folder:Path, videos) -> Path:
    "Serve `tar` with --capture FOLDER, post every video, wait for a line per request, stop the server."
    proc, url = _start(tar, ("--capture", folder))
    try:
        for v in videos: _post(url, Path(v).read_bytes())
        deadline = time.time() + 30
        while sum(f.read_text().count("\n") for f in folder.rglob("*.jsonl")) < len(videos) and time.time() < deadline: time.sleep(0.1)
    finally: proc.terminate(); proc.wait(10)
    return folder

def _cell(t:dict) -> str:
    if t["p"] is None: return f"{t['median']}: too few"
    return f"{t['median']:.3g}: PSI {t['psi']:.2f}, p {t['p']:.2g}, {t['outside']:.0%} out"

def main():
    ap = argparse.ArgumentParser(description="monitor reports of captures of shifted videos")
    ap.add_argument("--data", type=Path, default=Path("../shared/datasets"))
    ap.add_argument("--preset", default="veryfast", help="x264 preset of the degraded copies")
    ap.add_argument("--work", type=Path, default=None, help="working folder (default: a temporary one)")
    a = ap.parse_args()
    work = a.work or Path(tempfile.mkdtemp(prefix="drift-"))
    from deepfake_mlops.inference import package_model
    from deepfake_mlops.manifest import read_manifest
    from deepfake_mlops.monitor import STATISTICS
    from deepfake_mlops.robustness import degrade_dataset
    if not (work/"faces"/"faces.csv").exists(): _run("extract", a.data/"ffpp", "--out", work/"faces", "--frames", 8, "--no-contact-sheet")
    if not (work/"model"/"model.pt").exists(): _run("train", work/"faces", "--out", work/"model", "--epochs", 1)
    tar = package_model(work/"model", work/"model.tar.gz", version=VERSION)
    split = pd.read_csv(work/"model"/"split.csv")
    manifest = read_manifest(a.data/"ffpp")
    test = manifest[manifest["video_id"].isin(split.loc[split["split"] == "test", "video_id"])].reset_index(drop=True)
    sets = {"FF++ test split": list(test["path"])}
    for name, label in [("crf35", "the same, CRF 35"), ("360p", "the same, 360p")]:
        copies = degrade_dataset(test, work/"degraded", name, workers=2, progress=False, preset=a.preset)
        sets[label] = list(copies.loc[copies["status"] != "failed", "path"])
    sets["DFDC sample"] = sorted((a.data/"dfdc").rglob("*.mp4"))
    baseline = json.loads((work/"model"/"baseline.json").read_text())
    med = lambda v: pd.Series([x for x in v if x is not None]).median()
    head = ["capture", "videos", "FAKE share", *STATISTICS, "alarm"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head),
             f"| validation baseline | {baseline['videos']} | {baseline['fake_share']:.0%} | "
             + " | ".join(f"{med(baseline['statistics'].get(n, [])):.3g}" for n in STATISTICS) + " | |"]
    for i, (label, videos) in enumerate(sets.items()):
        folder = _capture(tar, work/"capture"/str(i), videos)
        proc = _run("monitor", folder, "--model", tar, "--out", work/"report"/str(i), "--window", "1d", ok=(0, 1))
        w = json.loads((work/"report"/str(i)/"monitor.json").read_text())["windows"][0]
        lines.append(f"| {label} | {w['answers']} | {w['fake_share']:.0%} | " + " | ".join(_cell(w["statistics"][n]) for n in STATISTICS)
                     + f" | {', '.join(w['shifted']) or 'none'} (exit {proc.returncode}) |")
    print(f"{platform.node()}: {os.cpu_count()} CPUs, x264 preset {a.preset}, work folder {work}")
    print("\n".join(lines))

if __name__ == "__main__":
    main()
