"Helpers for the integration tests: run the installed `deepfake-mlops` command and inspect an extraction folder."
from __future__ import annotations
import os, subprocess, sys
from pathlib import Path

import pandas as pd
import pytest

# the console script installed beside this interpreter (cli.py has no `__main__` guard for `python -m`)
CLI = Path(sys.executable).parent/"deepfake-mlops"


def cli_command(*args) -> list[str]:
    "The argv that runs `deepfake-mlops ARGS...` from this environment."
    if not CLI.exists(): pytest.fail(f"{CLI} not found: install the package into this environment (`make install`)")
    return [str(CLI), *map(str, args)]


def run_cli(*args, env:dict|None=None, timeout:float=600) -> subprocess.CompletedProcess:
    "Run `deepfake-mlops ARGS...` as a real subprocess to completion (`env`: variables to add); output captured as text."
    return subprocess.run(cli_command(*args), capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, **env} if env else None)


def describe(proc:subprocess.CompletedProcess) -> str:
    "The exit status and the end of the output of a finished command, for assertion messages."
    return f"exit {proc.returncode}\n--- stdout ---\n{proc.stdout[-3000:]}\n--- stderr ---\n{proc.stderr[-3000:]}"


def temp_leftovers(out:Path) -> list[str]:
    "Files or folders under `out` named like temporary files (a leading dot, or a `.tmp` ending)."
    return sorted(str(p.relative_to(out)) for p in out.rglob("*") if p.name.startswith(".") or p.name.endswith(".tmp"))


def read_csv_text(path:Path) -> pd.DataFrame:
    "A CSV written by the extraction, every column as text and empty cells as empty strings."
    return pd.read_csv(path, dtype=str, keep_default_na=False)


# the FF++ runs of tests/test_local_engine.py test the engine on real videos, not the recipe: 8 frames a video and one
# epoch (the defaults, 32 frames and up to 8 early-stopped epochs, take 5 minutes on 2 cores; BENCHMARKS.md has their
# figures), and an open gate: on the sample's 14 test videos the AUC's 95% interval spans about 0.1 to 1.0, so whether
# a model clears MinAuc 0.6 is chance, not a property of the engine; both branches of the gate are tested
FFPP_RUN = ["--param", "FramesPerVideo=8", "--param", "Epochs=1", "--param", "MinAuc=0"]
