"""Training recipes side by side: identity cross-validation of each, over the same folds and seeds, in one run.

Each recipe is a set of `TrainConfig` overrides. Every recipe is cross-validated with
`crossval.cross_validate` (k folds by identity, each seed its own folds; a seed's folds are the same
for every recipe, so the recipes are compared video by video). Cross-validation is resumable, so a
run that was stopped, or folders made by `python -m deepfake_mlops.crossval` with the same settings,
are picked up where they are. Optionally the held-out models also score degraded copies of the
videos (`robustness.score_with_folds`), one extraction folder per copy.

    .venv/bin/python benchmarks/recipes.py --faces runs/ffpp-faces --out runs/recipes \
        --recipe sbi blend=sbi --recipe mix blend=mix seeds=0 --seeds 0 1 2 \
        [--copies crf28=runs/faces-crf28 crf35=runs/faces-crf35 360p=runs/faces-360p] \
        [--json benchmarks/results/recipes-cpu.json]
"""
import argparse, dataclasses, json, os, platform, time, typing
from pathlib import Path

import pandas as pd

from deepfake_mlops.core import TrainConfig
from deepfake_mlops.crossval import cross_validate
from deepfake_mlops.robustness import robustness_table, score_with_folds

def recipe_config(overrides: list[str]) -> tuple[TrainConfig, list[int]|None]:
    "A TrainConfig from `name=value` overrides, each value parsed as its field's type; `seeds=0,1` sets the recipe's seeds."
    hints = typing.get_type_hints(TrainConfig)
    values, seeds = {}, None
    for item in overrides:
        name, _, text = item.partition("=")
        if name == "seeds":
            seeds = [int(s) for s in text.split(",")]
            continue
        kind = hints[name]
        if kind is bool: values[name] = text.lower() in ("1", "true", "yes")
        elif kind in (int, float): values[name] = kind(text)
        else: values[name] = text
    return TrainConfig(**values), seeds

def robustness(cv_dir: Path, predictions: pd.DataFrame, copies: dict[str, Path]) -> list[dict]:
    "Per seed and copy: AUC, real false-positive rate and real verdict flips, on the videos every copy has."
    scored = {name: score_with_folds(cv_dir, faces, progress=False) for name, faces in copies.items()}
    common = set(predictions["video_id"]).intersection(*(set(s["video_id"]) for s in scored.values()))
    rows = []
    for seed, original in predictions.groupby("seed"):
        variants = {"original": original} | {n: s[s["seed"] == seed] for n, s in scored.items()}
        table = robustness_table({n: v[v["video_id"].isin(common)] for n, v in variants.items()})
        rows += [dict(seed=int(seed), variant=v, **r) for v, r in table.to_dict("index").items()]
    return rows

def main():
    ap = argparse.ArgumentParser(description="training recipes compared by identity cross-validation")
    ap.add_argument("--faces", type=Path, required=True, help="extraction folder of the dataset")
    ap.add_argument("--out", type=Path, required=True, help="one cross-validation folder per recipe goes here")
    ap.add_argument("--recipe", nargs="+", action="append", required=True, metavar=("NAME", "FIELD=VALUE"),
                    help="a recipe: its name, then TrainConfig overrides (repeat for each recipe)")
    ap.add_argument("--folds", type=int, default=5)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--copies", nargs="*", default=[], metavar="NAME=FACES_DIR",
                    help="extraction folders of degraded copies, scored by each recipe's held-out models")
    ap.add_argument("--json", type=Path, help="write the results here")
    a = ap.parse_args()
    copies = {n: Path(p) for n, _, p in (c.partition("=") for c in a.copies)}
    results = {}
    for name, *overrides in a.recipe:
        (cfg, seeds), start = recipe_config(overrides), time.perf_counter()
        seeds = seeds or a.seeds
        result = cross_validate(a.faces, a.out/name, cfg, k=a.folds, seeds=seeds, progress=False)
        predictions = pd.read_csv(a.out/name/"predictions.csv", dtype={"video_id": str}, keep_default_na=False)
        results[name] = dict(overrides=overrides, config=dataclasses.asdict(cfg), seconds=round(time.perf_counter() - start, 1),
                             summary=result["summary"], per_method=result["per_method"],
                             per_seed={s: {k: v[k] for k in ("auc", "log_loss", "accuracy", "false_positive_rate", "ci95")}
                                       for s, v in result["per_seed"].items()},
                             robustness=robustness(a.out/name, predictions, copies) if copies else [])
        s = result["summary"]
        print(f"{name}: AUC {s['auc']['mean']:.3f} (worst seed {s['auc']['min']:.3f}), log loss {s['log_loss']['mean']:.3f}, "
              f"accuracy {s['accuracy']['mean']:.3f}, real FPR {s['false_positive_rate']['mean']:.3f} "
              f"over {len(result['per_seed'])} seeds", flush=True)
    if a.json:
        a.json.parent.mkdir(parents=True, exist_ok=True)
        a.json.write_text(json.dumps(dict(machine=f"{platform.machine()}, {os.cpu_count()} cores", folds=a.folds,
                                          seeds=a.seeds, recipes=results), indent=2, default=float) + "\n")

if __name__ == "__main__":
    main()
