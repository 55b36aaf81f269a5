"Fixtures shared by the integration tests: the sample datasets and rendered demo clips."
from __future__ import annotations
from pathlib import Path

import pytest

from deepfake_mlops.core import shared_datasets

from helpers import describe, run_cli


@pytest.fixture(scope="session")
def datasets() -> Path:
    "The sample datasets folder (../shared/datasets or $DEEPFAKE_MLOPS_DATASETS)."
    path = shared_datasets()
    if path is None:
        pytest.skip("../shared/datasets not present: set DEEPFAKE_MLOPS_DATASETS or put the sample datasets beside the checkout")
    return path


@pytest.fixture(scope="session")
def ffpp(datasets) -> Path:
    "The FaceForensics++ sample (official folder layout)."
    path = datasets/"ffpp"
    if not path.is_dir(): pytest.skip(f"{path} not present: the FaceForensics++ sample is missing from the datasets folder")
    return path


@pytest.fixture(scope="session")
def demo_clips(tmp_path_factory) -> Path:
    "A labels.csv dataset of 12 short rendered clips (6 REAL, 6 FAKE) that needs nothing outside the repository."
    from deepfake_mlops.demo import render_demo_clips
    return render_demo_clips(tmp_path_factory.mktemp("demo")/"clips", n_real=6, n_fake=6)


@pytest.fixture(scope="session")
def demo_model(demo_clips, tmp_path_factory):
    "A model trained for one epoch on the demo clips, and its model.tar.gz."
    work = tmp_path_factory.mktemp("inference")
    proc = run_cli("extract", demo_clips, "--out", work/"faces", "--frames", 8, "--no-contact-sheet")
    assert proc.returncode == 0, describe(proc)
    proc = run_cli("train", work/"faces", "--out", work/"model", "--epochs", 1, "--batch-size", 8, "--workers", 0)
    assert proc.returncode == 0, describe(proc)
    from deepfake_mlops.inference import package_model
    return work, package_model(work/"model", work/"model.tar.gz", version="test-1")
