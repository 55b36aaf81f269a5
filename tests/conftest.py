"Shared fixtures: the sample datasets, the installed `deepfake-mlops` command, and rendered demo clips."
from __future__ import annotations
import os, subprocess, sys
from pathlib import Path

import pandas as pd
import pytest

from deepfake_mlops.core import shared_datasets

# the console script installed beside this interpreter (cli.py has no `__main__` guard for `python -m`)
CLI = Path(sys.executable).parent/"deepfake-mlops"


def run_cli(*args, timeout:float=600, **kw) -> subprocess.CompletedProcess:
    "Run `deepfake-mlops ARGS...` as a real subprocess; returns the finished process with text stdout/stderr."
    if not CLI.exists(): pytest.fail(f"{CLI} not found: install the package into this environment (`make install`)")
    return subprocess.run([str(CLI), *map(str, args)], capture_output=True, text=True, timeout=timeout, **kw)


def describe(proc:subprocess.CompletedProcess) -> str:
    "The command's exit status and the end of its output, for assertion messages."
    return f"exit {proc.returncode}\n--- stdout ---\n{proc.stdout[-3000:]}\n--- stderr ---\n{proc.stderr[-3000:]}"


def temp_leftovers(out:Path) -> list[str]:
    "Files or folders under `out` named like temporary files (a leading dot or a `.tmp` ending)."
    return sorted(str(p.relative_to(out)) for p in out.rglob("*") if p.name.startswith(".") or p.name.endswith(".tmp"))


def read_csv_text(path:Path) -> pd.DataFrame:
    "A CSV written by the extraction, every column as text and empty cells as empty strings."
    return pd.read_csv(path, dtype=str, keep_default_na=False)


@pytest.fixture(scope="session")
def datasets() -> Path:
    path = shared_datasets()
    if path is None:
        pytest.skip("../shared/datasets not present: set DEEPFAKE_MLOPS_DATASETS or put the sample datasets beside the checkout")
    return path


@pytest.fixture(scope="session")
def ffpp(datasets) -> Path:
    path = datasets/"ffpp"
    if not path.is_dir(): pytest.skip(f"{path} not present: the FaceForensics++ sample is missing from the datasets folder")
    return path


@pytest.fixture(scope="session")
def demo_clips(tmp_path_factory) -> Path:
    "A labels.csv dataset of 12 short rendered clips (6 REAL, 6 FAKE) that needs nothing outside the repository."
    from deepfake_mlops.demo import render_demo_clips
    return render_demo_clips(tmp_path_factory.mktemp("demo")/"clips", n_real=6, n_fake=6)
