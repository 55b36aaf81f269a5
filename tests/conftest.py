"Fixtures shared by the integration tests: the sample datasets, rendered demo clips, a demo model and its server."
from __future__ import annotations
import os, shutil, socket, subprocess, time, urllib.error, urllib.request
from pathlib import Path

import pytest

from deepfake_mlops.core import shared_datasets

from helpers import FFPP_RUN, cli_command, describe, run_cli


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


@pytest.fixture(scope="session", autouse=True)
def ffpp_run_started(request, tmp_path_factory):
    "The FF++ engine run, started in the background as the session starts when a selected test needs it: (root, process, output file) or None."
    # its minute of work (mostly one process) overlaps the tests collected before tests/test_local_engine.py
    path = shared_datasets()
    wanted = any({"ffpp_run", "ffpp_run_started"} & set(item.fixturenames) for item in request.session.items)
    if not wanted or path is None or not (path/"ffpp").is_dir():
        yield None
        return
    root = tmp_path_factory.mktemp("ffpp-engine")
    out = root.parent/f"{root.name}.out"
    with open(out, "w") as f:
        proc = subprocess.Popen(cli_command("run", "--root", root, "--data", path/"ffpp", *FFPP_RUN), stdout=f,
                                stderr=subprocess.STDOUT, text=True)
    yield root, proc, out
    if proc.poll() is None: proc.kill(); proc.wait()


@pytest.fixture(scope="session")
def ffpp_faces(ffpp, tmp_path_factory) -> Path:
    "Face crops of the FF++ sample at 8 frames a video, extracted once for the tests that train on them (none writes there)."
    out = tmp_path_factory.mktemp("ffpp-faces")/"faces"
    proc = run_cli("extract", ffpp, "--out", out, "--frames", 8, "--workers", 2, "--no-contact-sheet")
    assert proc.returncode == 0, describe(proc)
    return out


@pytest.fixture(scope="session")
def demo_clips(tmp_path_factory) -> Path:
    "A labels.csv dataset of 12 short rendered clips (6 REAL, 6 FAKE) that needs nothing outside the repository."
    from deepfake_mlops.demo import render_demo_clips
    return render_demo_clips(tmp_path_factory.mktemp("demo")/"clips", n_real=6, n_fake=6)


@pytest.fixture(scope="session")
def demo_faces(demo_clips, tmp_path_factory) -> Path:
    "Face crops of the demo clips (8 frames each), extracted once for every test that reads them (none writes there)."
    out = tmp_path_factory.mktemp("faces")/"faces"
    proc = run_cli("extract", demo_clips, "--out", out, "--frames", 8, "--workers", 2, "--no-contact-sheet")
    assert proc.returncode == 0, describe(proc)
    return out


@pytest.fixture(scope="session")
def demo_model(demo_faces, tmp_path_factory):
    "A model trained for one epoch on the demo clips' crops, and its model.tar.gz: (work folder, model.tar.gz)."
    work = tmp_path_factory.mktemp("inference")
    proc = run_cli("train", demo_faces, "--out", work/"model", "--epochs", 1, "--batch-size", 8, "--workers", 0)
    assert proc.returncode == 0, describe(proc)
    from deepfake_mlops.inference import package_model
    return work, package_model(work/"model", work/"model.tar.gz", version="test-1")


@pytest.fixture(scope="session")
def free_port():
    "A function that returns a TCP port free on 127.0.0.1 at the time of the call."
    def pick() -> int:
        with socket.socket() as s: s.bind(("127.0.0.1", 0)); return s.getsockname()[1]
    return pick


@pytest.fixture(scope="session")
def start_server(free_port):
    "A function that runs `deepfake-mlops serve MODEL [ARGS]` on a free port (`env`: variables to add) and returns its URL once /ping answers; `start.procs[url]` is its process."
    procs = []
    def start(model, env:dict|None=None, timeout:float=120, args=()) -> str:
        port = free_port()
        proc = subprocess.Popen(cli_command("serve", model, "--port", port, *args), stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True, env={**os.environ, **env} if env else None)
        procs.append(proc)
        start.procs[f"http://127.0.0.1:{port}"] = proc
        url, deadline = f"http://127.0.0.1:{port}", time.time() + timeout
        while True:
            try:
                with urllib.request.urlopen(url + "/ping", timeout=5) as r:
                    if r.status == 200: return url
            except (urllib.error.URLError, ConnectionError): pass
            if proc.poll() is not None: pytest.fail(f"deepfake-mlops serve {model} exited {proc.returncode}:\n{proc.stdout.read()}")
            if time.time() > deadline: pytest.fail(f"deepfake-mlops serve {model} did not answer /ping within {timeout} s")
            time.sleep(0.3)
    start.procs = {}
    yield start
    for proc in procs:
        proc.terminate()
        try: proc.wait(10)
        except subprocess.TimeoutExpired: proc.kill()


@pytest.fixture(scope="session")
def demo_server(demo_model, start_server):
    "`deepfake-mlops serve` of the demo model.tar.gz, as a user runs it: (base URL, model.tar.gz)."
    work, tar = demo_model
    return start_server(tar), tar



@pytest.fixture(scope="session")
def browser():
    "Headless Chromium driven by Selenium through the installed chromedriver (nothing is downloaded), logging its requests."
    chromium, chromedriver = shutil.which("chromium"), shutil.which("chromedriver")
    if not (chromium and chromedriver):
        pytest.skip("chromium and chromedriver not found: apt-get install chromium chromium-driver (as .ci/run does)")
    webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is not installed: pip install -e '.[dev]'")
    from selenium.webdriver.chrome.service import Service
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--window-size=1400,1000"):
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"performance": "ALL"})  # every request, for tests that check them
    # naming the driver keeps Selenium Manager from looking for (and downloading) one
    driver = webdriver.Chrome(options=options, service=Service(executable_path=chromedriver))
    yield driver
    driver.quit()
