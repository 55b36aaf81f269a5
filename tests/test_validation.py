"Bad settings and damaged records, as a user meets them: refused before any work, in one line that names the culprit."
from __future__ import annotations
import json, shutil, sqlite3
from pathlib import Path

import pytest

from deepfake_mlops.registry import Registry

from helpers import describe, run_cli


@pytest.fixture(scope="module")
def definition() -> dict:
    "The pipeline definition `deepfake-mlops run` executes."
    from deepfake_mlops.local import local_definition
    return local_definition()[0]


def one_line_error(proc) -> str:
    "The error a command printed: exactly one line on stderr, no traceback."
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in proc.stderr, describe(proc)
    return lines[0]


@pytest.mark.parametrize("override,message", [
    ("Epochs=0", "parameter Epochs is 0; it must be an integer from 1 to 1000"),
    ("Epochs=-1", "parameter Epochs is -1; it must be an integer from 1 to 1000"),
    ("BatchSize=0", "parameter BatchSize is 0; it must be an integer from 1 to 4096"),
    ("Backbone=nope", "parameter Backbone is 'nope'; it must be one of mobilenet_v2, efficientnet_lite0, efficientnet_lite2"),
    ("MinAuc=2", "parameter MinAuc is 2.0; it must be a number from 0 to 1"),
    ("MinAuc=nan", "parameter MinAuc is nan; it must be a number from 0 to 1"),
    ("FramesPerVideo=0", "parameter FramesPerVideo is 0; it must be an integer from 1 to 10000"),
    ("ProcessingInstanceCount=0", "parameter ProcessingInstanceCount is 0; it must be an integer from 1 to 100"),
    ("LearningRate=0", "parameter LearningRate is 0.0; it must be a number above 0 and at most 1"),
])
def test_every_parameter_is_range_checked_against_the_definition_run_executes(definition, override, message):
    # the check `run` and `sagemaker_run.start_execution` both make
    from deepfake_mlops.definition import parse_overrides
    with pytest.raises(ValueError, match="^" + message.replace("(", r"\(").replace(")", r"\)") + "$"):
        parse_overrides(definition, [override])


def test_run_refuses_an_out_of_range_value_before_any_step(tmp_path):
    proc = run_cli("run", "--root", tmp_path/"engine", "--data", tmp_path, "--param", "BatchSize=0")
    assert proc.returncode == 2, describe(proc)
    assert one_line_error(proc) == "deepfake-mlops run: error: parameter BatchSize is 0; it must be an integer from 1 to 4096"
    assert not (tmp_path/"engine"/"executions").exists()


def test_run_refuses_a_definition_whose_own_default_is_out_of_range(definition, tmp_path):
    edited = json.loads(json.dumps(definition))
    next(p for p in edited["Parameters"] if p["Name"] == "MinAuc")["DefaultValue"] = 2.5
    (tmp_path/"d.json").write_text(json.dumps(edited))
    proc = run_cli("run", "--root", tmp_path/"engine", "--data", tmp_path, "--definition", tmp_path/"d.json")
    assert proc.returncode == 2, describe(proc)
    assert "the definition's default for parameter MinAuc is 2.5; it must be a number from 0 to 1" in one_line_error(proc)
    assert not (tmp_path/"engine"/"executions").exists()


def test_train_refuses_a_zero_batch_size_in_one_line(tmp_path, capsys):
    proc = run_cli("train", tmp_path, "--out", tmp_path/"model", "--batch-size", 0)
    assert proc.returncode == 2, describe(proc)
    assert one_line_error(proc) == "deepfake-mlops train: error: batch_size (--batch-size) is 0; it must be an integer from 1 to 4096"
    assert not (tmp_path/"model").exists()
    # the SageMaker training entry point (what train_entry.py runs; its options come from the same TrainConfig) says the same
    from deepfake_mlops.steps import train_main
    assert train_main(["--train", str(tmp_path), "--model-dir", str(tmp_path/"model"), "--epochs", "-1"]) == 2
    assert capsys.readouterr().err.strip() == "training failed: epochs (--epochs) is -1; it must be an integer from 1 to 1000"
    assert not (tmp_path/"model").exists()


def _damaged(path:Path, how:str):
    "A SQLite file that is noise, or a real one cut in half."
    path.parent.mkdir(parents=True, exist_ok=True)
    if how == "garbage":
        path.write_bytes(b"this is not a database\n" * 200)
        return
    db = sqlite3.connect(path)
    db.execute("CREATE TABLE t (x TEXT)")
    db.executemany("INSERT INTO t VALUES (?)", [("x" * 1000,)] * 100)
    db.commit()
    db.close()
    path.write_bytes(path.read_bytes()[:path.stat().st_size // 2])


@pytest.mark.parametrize("how,commands", [("garbage", slice(None)), ("truncated", slice(2))])
def test_a_damaged_database_is_named_in_one_line(tmp_path, how, commands):
    advice = "is not a readable SQLite database"
    every = [(["models", "list"], "registry.db"), (["executions", "list"], "engine.db"),
             (["run", "--data", tmp_path], "engine.db"), (["run", "--data", tmp_path], "registry.db"),
             (["predict", "deepfake-detection:1", tmp_path/"clip.mp4"], "registry.db")]
    for i, (argv, db) in enumerate(every[commands]):
        root = tmp_path/f"engine-{i}"
        _damaged(root/db, how)  # the other database is absent, or made afresh by the command
        proc = run_cli(*argv, "--root", root)
        assert proc.returncode == 2, describe(proc)
        line = one_line_error(proc)
        assert f"{root/db} {advice}" in line and "move it aside" in line, line


def test_read_commands_with_a_mistyped_root_make_nothing(tmp_path):
    typo = tmp_path/"runs-typo"
    models = run_cli("models", "list", "--root", typo)
    assert models.returncode == 2 and f"no model registry at {typo/'registry.db'}" in one_line_error(models), describe(models)
    executions = run_cli("executions", "list", "--root", typo)
    assert executions.returncode == 2 and f"no executions at {typo}" in one_line_error(executions), describe(executions)
    assert not typo.exists()


def test_approve_and_reject_need_a_version_and_every_change_is_kept(tmp_path):
    reg = Registry(tmp_path/"registry.db")
    for _ in range(2): reg.register("deepfake-detection", "/m.tar.gz", {"auc": 0.7}, {})
    for ref in ("deepfake-detection", "deepfake-detection:latest"):
        proc = run_cli("models", "approve", ref, "--root", tmp_path)
        assert proc.returncode == 2 and "models approve needs an explicit version such as deepfake-detection:3" in one_line_error(proc), describe(proc)
    assert {r["status"] for r in reg.list()} == {"PendingManualApproval"}
    assert run_cli("models", "reject", "deepfake-detection:1", "--note", "fails on DFDC", "--by", "ana", "--root", tmp_path).returncode == 0
    assert run_cli("models", "approve", "deepfake-detection:1", "--note", "retrained data", "--by", "ben", "--root", tmp_path).returncode == 0
    shown = json.loads(run_cli("models", "show", "deepfake-detection:1", "--root", tmp_path).stdout)
    assert shown["status"] == "Approved"
    assert [(h["status"], h["note"], h["by"]) for h in shown["history"]] == [
        ("PendingManualApproval", "registered", shown["history"][0]["by"]), ("Rejected", "fails on DFDC", "ana"),
        ("Approved", "retrained data", "ben")]
    assert all(h["at"] for h in shown["history"])


def test_labels_csv_mistakes_are_named_for_what_they_are(tmp_path):
    data = tmp_path/"wild"
    data.mkdir()
    for name in ("a.mp4", "b.mp4"): (data/name).write_bytes(b"")
    (data/"labels.csv").write_text("path,label\na.mp4,REAL\nb.mp4,FAKE\na.mp4,FAKE\n")
    twice = run_cli("manifest", data)
    assert twice.returncode == 2, describe(twice)
    line = one_line_error(twice)
    assert f"{data/'labels.csv'}, line 4: a.mp4 is listed again (first on line 2)" in line and "extension" not in line, line
    (data/"labels.csv").write_bytes("path,label\na.mp4,REAL\nb.mp4,FAKE\n# café\n".encode("latin-1"))
    latin = run_cli("manifest", data)
    assert latin.returncode == 2, describe(latin)
    assert f"{data/'labels.csv'} is not UTF-8 text" in one_line_error(latin)


def _gate(definition:dict, evaluation:dict, tmp_path:Path, min_auc:float):
    "The pipeline's two gates, evaluated by the local engine on `evaluation` as the Evaluate step's report: (AUC ok, threshold ok, Fail message)."
    from deepfake_mlops.engine import Context, condition_holds
    from deepfake_mlops.jobs import Store
    from deepfake_mlops.definition import all_steps
    store = Store(tmp_path/"store")
    uri = "s3://local-artifacts/x/Evaluate/evaluation"
    (store.path(uri)).mkdir(parents=True, exist_ok=True)
    (store.path(uri)/"evaluation.json").write_text(json.dumps(evaluation))
    params = {p["Name"]: p.get("DefaultValue") for p in definition["Parameters"]} | {"MinAuc": min_auc}
    ctx = Context(params, {"PipelineExecutionId": "x"}, store, definition)
    ctx.props["Evaluate"] = {"ProcessingOutputConfig.Outputs['evaluation'].S3Output.S3Uri": uri}
    steps = {s["Name"]: s for s in all_steps(definition)}
    holds = [all(condition_holds(c, ctx) for c in steps[n]["Arguments"]["Conditions"]) for n in ("CheckAuc", "CheckThreshold")]
    return *holds, ctx.resolve(steps["NoUsableThreshold"]["Arguments"])["ErrorMessage"]


def test_a_model_without_a_usable_threshold_is_flagged_and_not_registered_whatever_min_auc(demo_model, demo_faces, definition, tmp_path):
    # a config whose threshold is 1.0 (every video REAL), as a model without a usable threshold has
    work, _ = demo_model
    model = shutil.copytree(work/"model", tmp_path/"model", ignore=shutil.ignore_patterns("checkpoints"))
    config = json.loads((model/"config.json").read_text())
    (model/"config.json").write_text(json.dumps({**config, "threshold": 1.0}))
    from deepfake_mlops.evaluate import evaluate_model, summary_line
    report = evaluate_model(model, demo_faces, tmp_path/"eval", workers=0, n_boot=100)
    # what `deepfake-mlops evaluate` and the pipeline's Evaluate step print
    assert "WARNING, threshold not usable: the threshold is 1, so the model calls every video REAL" in summary_line(report)
    evaluation = json.loads((tmp_path/"eval"/"evaluation.json").read_text())
    check = evaluation["threshold_check"]
    assert check["usable"] is False and "calls every video REAL" in check["reason"]
    assert check["validation_videos"] >= 2  # the model's validation videos were scored for the check
    auc_ok, threshold_ok, message = _gate(definition, evaluation, tmp_path, min_auc=0.0)
    assert auc_ok and not threshold_ok
    assert message.startswith("the model's threshold is not usable: the threshold is 1") and "whatever MinAuc says" in message
    # the same report with a usable threshold opens the gate
    evaluation["threshold_check"]["usable"] = True
    assert _gate(definition, evaluation, tmp_path, min_auc=0.0)[:2] == (True, True)
