"""MLflow tracking as users meet it: a local run tracked with nothing configured, a training job logging over HTTP to a
real `mlflow server` on loopback (killed and resumed), a server that is not there or goes away, and the MLflow UI."""
from __future__ import annotations
import json, os, signal, subprocess, sys, time, urllib.request
from pathlib import Path

import pytest

from helpers import cli_command, describe, run_cli
from test_processes import RESUMABLE, _execution, _kill_and_check, _start, _started, _wait_for

mlflow = pytest.importorskip("mlflow", reason="mlflow is not installed: pip install -e .")

# three epochs of batches of 8: enough steps for the demo model to pass the threshold gate and register
TRACKED_RUN = ["--param", "FramesPerVideo=8", "--param", "Epochs=3", "--param", "BatchSize=8", "--param", "MinAuc=0"]
STEPS = {"Preprocess", "Train", "Evaluate", "CheckAuc", "CheckThreshold", "Register-RegisterModel"}


def _runs(uri:str):
    "Every run of the experiment at `uri` (the client's own API: `mlflow.set_tracking_uri` would set $MLFLOW_TRACKING_URI for later tests)."
    client = mlflow.MlflowClient(uri)
    return client.search_runs([client.get_experiment_by_name("deepfake-detection").experiment_id], max_results=1000)


def _steps_of(client, run_id:str, key:str="val_auc") -> list[int]:
    return sorted(m.step for m in client.get_metric_history(run_id, key))


def _registered(root:Path, version:int) -> dict:
    proc = run_cli("models", "show", f"deepfake-detection:{version}", "--root", root)
    assert proc.returncode == 0, describe(proc)
    return json.loads(proc.stdout)


def test_a_local_run_is_tracked_as_a_parent_run_with_a_run_per_step(demo_clips, tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False); monkeypatch.delenv("DEEPFAKE_MLOPS_TRACKING", raising=False)
    root = tmp_path/"engine"
    proc = run_cli("run", "--root", root, "--data", demo_clips, *TRACKED_RUN, timeout=1800)
    assert proc.returncode == 0 and "registered deepfake-detection:1" in proc.stdout, describe(proc)
    uri = f"sqlite:///{root.resolve()}/mlflow/mlflow.db"  # the local store, with nothing configured
    runs = _runs(uri)
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    assert len(parents) == 1 and parents[0].info.run_name.startswith("execution local-")
    parent = parents[0]
    assert parent.data.params["Epochs"] == "3" and parent.info.status == "FINISHED"
    nested = {r.info.run_name: r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id}
    assert set(nested) == STEPS
    client = mlflow.MlflowClient(uri)
    train = nested["Train"]
    assert train.data.params["train.epochs"] == "3" and train.data.params["extraction.frames_per_video"] == "8"
    assert train.data.params["data.manifest_sha256"] and train.data.params["code.package"]
    assert _steps_of(client, train.info.run_id) == [1, 2, 3]  # every epoch, once
    assert {"train_loss", "val_log_loss", "images_per_s"} <= set(train.data.metrics)
    artifacts = {a.path for a in client.list_artifacts(train.info.run_id, "model")}
    assert artifacts == {"model/config.json", "model/model.pt"}
    evaluate = nested["Evaluate"]
    assert {"test_auc", "test_auc_ci95_low", "test_auc_ci95_high", "test_log_loss"} <= set(evaluate.data.metrics)
    assert {"evaluation/evaluation.png", "evaluation/evaluation.json"} <= {a.path for a in client.list_artifacts(evaluate.info.run_id, "evaluation")}
    # the registered version names the run that trained it (`models show`)
    assert _registered(root, 1)["lineage"]["mlflow"]["training_run_id"] == train.info.run_id

    # the same run again: every job from the cache, and the cached steps point at the runs that produced them
    again = run_cli("run", "--root", root, "--data", demo_clips, *TRACKED_RUN, timeout=1800)
    assert again.returncode == 0 and "Train: cached" in again.stdout, describe(again)
    second = [r for r in _runs(uri) if r.info.run_name == "Train" and r.info.run_id != train.info.run_id]
    assert len(second) == 1 and second[0].data.tags["deepfake_mlops.cached_from_run"] == train.info.run_id
    assert _registered(root, 2)["lineage"]["mlflow"]["training_run_id"] == train.info.run_id


@pytest.fixture
def mlflow_server(tmp_path_factory, free_port):
    "A real `mlflow server` on 127.0.0.1 (SQLite and an artifact folder of its own): its URL; `stop()` ends it early."
    # its files outside the test's tmp_path: a test that looks for leftover processes by that path must not find it
    tmp_path = tmp_path_factory.mktemp("mlflow-server")
    port = free_port()
    exe = Path(sys.executable).parent/"mlflow"
    proc = subprocess.Popen([str(exe), "server", "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
                             "--backend-store-uri", f"sqlite:///{tmp_path}/server.db", "--artifacts-destination", str(tmp_path/"artifacts")],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while True:
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=2): break
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline: pytest.fail(f"mlflow server did not start on {url}")
            time.sleep(0.3)
    def stop():
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL); proc.wait(30)
    url_of = type("Server", (), {"url": url, "stop": staticmethod(stop)})
    yield url_of
    stop()


def test_a_training_job_logs_over_http_and_a_killed_run_resumes_into_the_same_run(demo_clips, tmp_path, mlflow_server, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_server.url)  # the engine and its jobs, as a SageMaker job reaches a server
    root, log = tmp_path/"engine", tmp_path/"run.log"
    proc = _start(["run", "--root", root, "--data", demo_clips, *RESUMABLE], log)
    _wait_for(lambda: _started(root, "Train"), proc, log, timeout=600)  # an epoch checkpointed
    assert _kill_and_check(proc, signal.SIGKILL, str(tmp_path)) == []
    again = run_cli("run", "--root", root, "--data", demo_clips, *RESUMABLE, timeout=1800)
    assert again.returncode == 0 and "after epoch 1" in again.stdout, describe(again)
    client = mlflow.MlflowClient(mlflow_server.url)
    trained = [r for r in _runs(mlflow_server.url) if "val_auc" in r.data.metrics]
    assert len(trained) == 1, [r.info.run_name for r in trained]  # one run holds the training
    assert _steps_of(client, trained[0].info.run_id) == [1, 2]  # each epoch once, across the kill
    # the second attempt's step run says where its epochs went; the model's version names the run that has them
    attempts = [r for r in _runs(mlflow_server.url) if r.info.run_name == "Train"]
    assert len(attempts) == 2
    assert [r.data.tags.get("deepfake_mlops.continued_in_run") for r in attempts if r.info.run_id != trained[0].info.run_id] \
           == [trained[0].info.run_id]
    execution = _execution(root)
    version = json.loads(run_cli("models", "list", "--json", "--root", root).stdout)[0]
    assert version["lineage"]["execution_id"] == execution
    assert version["lineage"]["mlflow"]["training_run_id"] == trained[0].info.run_id


def test_a_server_that_does_not_answer_stops_the_run_before_any_work(demo_clips, tmp_path, free_port, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"http://127.0.0.1:{free_port()}")
    root = tmp_path/"engine"
    proc = run_cli("run", "--root", root, "--data", demo_clips, *TRACKED_RUN)
    assert proc.returncode == 2 and "does not answer" in proc.stderr and "DEEPFAKE_MLOPS_TRACKING=off" in proc.stderr, describe(proc)
    assert proc.stderr.count("\n") == 1 and "Traceback" not in proc.stderr
    assert not list((root/"executions").glob("*/Preprocess")), "a step ran although tracking could not"


def _train_until_first_epoch(faces, out, log, env) -> subprocess.Popen:
    with open(log, "w") as f:
        proc = subprocess.Popen(cli_command("train", faces, "--out", out, "--epochs", 3, "--batch-size", 8, "--workers", 0),
                                stdout=f, stderr=subprocess.STDOUT, env={**os.environ, **env})
    deadline = time.monotonic() + 600
    while "epoch 1:" not in log.read_text():
        if proc.poll() is not None or time.monotonic() > deadline: pytest.fail(f"training ended or stalled:\n{log.read_text()[-2000:]}")
        time.sleep(0.2)
    return proc


@pytest.mark.parametrize("mode", ["on", "strict"])
def test_a_server_lost_mid_training_warns_once_and_training_goes_on_unless_strict(demo_faces, tmp_path, mlflow_server, mode):
    log = tmp_path/"train.log"
    proc = _train_until_first_epoch(demo_faces, tmp_path/"model", log,
                                    {"MLFLOW_TRACKING_URI": mlflow_server.url, "DEEPFAKE_MLOPS_TRACKING": mode})
    mlflow_server.stop()
    proc.wait(900)
    text = log.read_text()
    if mode == "on":
        assert proc.returncode == 0 and text.count("tracking: logging metrics failed") == 1, text[-3000:]
        assert "this run goes on without tracking" in text
        epochs = (tmp_path/"model"/"metrics.csv").read_text().strip().splitlines()[1:]
        assert len(epochs) == 3  # every epoch trained and kept in metrics.csv
    else:
        assert proc.returncode == 2 and "error: tracking: logging metrics failed" in text, text[-3000:]
        assert "Traceback" not in text


def test_the_mlflow_ui_shows_the_run_and_its_validation_auc_chart(demo_faces, tmp_path, mlflow_server, browser):
    from selenium.webdriver.support.ui import WebDriverWait
    proc = run_cli("train", demo_faces, "--out", tmp_path/"model", "--epochs", 2, "--batch-size", 8, "--workers", 0,
                   "--tracking-uri", mlflow_server.url, timeout=900)  # the option, over the local store
    assert proc.returncode == 0, describe(proc)
    run = json.loads((tmp_path/"model"/"train.json").read_text())["mlflow_run_id"]
    experiment = mlflow.MlflowClient(mlflow_server.url).get_run(run).info.experiment_id
    browser.get(f"{mlflow_server.url}/#/experiments/{experiment}/runs/{run}/model-metrics")
    WebDriverWait(browser, 90).until(lambda d: "val_auc" in d.page_source and "val_log_loss" in d.page_source)
    page = browser.page_source
    assert run in page or "train" in page
    browser.save_screenshot(str(tmp_path/"mlflow-ui.png"))
