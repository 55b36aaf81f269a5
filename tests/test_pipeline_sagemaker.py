"""The orchestration notebook and the CodeBuild buildspec against a moto server on loopback: upsert, start, report.

moto implements the pipeline and model-registry APIs but runs no step (every execution is 'Succeeded' at
once) and has no ListPipelineExecutionSteps; the tests check that the report says so instead of
pretending that steps ran."""
from __future__ import annotations
import json, subprocess, sys
from pathlib import Path

import boto3
import nbformat
import pytest
import yaml

from aws import REGION, ROLE, environ, moto_server, run_buildspec

REPO = Path(__file__).resolve().parents[1]
NOTEBOOK = REPO/"nbs"/"run_pipeline.ipynb"
BUCKET = "deepfake-artifacts-test"


@pytest.fixture(scope="module")
def aws():
    "A moto server with the artifact bucket; yields its environment."
    with moto_server() as env, environ(env):
        boto3.client("s3", region_name=REGION).create_bucket(Bucket=BUCKET, CreateBucketConfiguration={"LocationConstraint": REGION})
        yield env


def papermill(out:Path, env:dict, **params) -> subprocess.CompletedProcess:
    args = [str(Path(sys.executable).parent/"papermill"), str(NOTEBOOK), str(out), "--cwd", str(REPO)]
    for k, v in params.items(): args += ["-y", json.dumps({k: v})]
    return subprocess.run(args, env=env, capture_output=True, text=True, timeout=600)


def notebook_text(path:Path) -> str:
    "All outputs of an executed notebook as text."
    nb = nbformat.read(path, 4)
    parts = []
    for c in nb.cells:
        for o in c.get("outputs", []):
            parts.append(o.get("text", "")); parts.append(json.dumps(o.get("data", {}))); parts.append(o.get("evalue", ""))
    return "\n".join(parts)


def test_notebook_upserts_starts_and_reports_without_pretending(aws, tmp_path):
    common = dict(target="sagemaker", region=REGION, role_arn=ROLE, default_bucket=BUCKET, pipeline_name="df-test",
                  model_package_group_name="df-test-models", project_name="proj", project_id="p-1", poll_s=1, wait_timeout_s=30)
    first = papermill(tmp_path/"first.ipynb", aws, **common, parameters={"Epochs": 3, "MinAuc": 0.75})
    assert first.returncode == 0, first.stderr[-3000:]
    with environ(aws):
        sm = boto3.client("sagemaker", region_name=REGION)
        created = sm.describe_pipeline(PipelineName="df-test")
        definition = json.loads(created["PipelineDefinition"])
        assert {s["Name"] for s in definition["Steps"]} == {"Preprocess", "Train", "Evaluate", "CheckAuc"}
        tags = sm.list_tags(ResourceArn=created["PipelineArn"])["Tags"]
        assert {"Key": "sagemaker:project-name", "Value": "proj"} in tags
        # the code the definition names was uploaded beside it
        s3 = boto3.client("s3", region_name=REGION)
        keys = [o["Key"] for o in s3.list_objects_v2(Bucket=BUCKET, Prefix="deepfake-mlops/code/")["Contents"]]
        assert sorted(k.rsplit("/", 1)[1] for k in keys) == ["launch.py", "sourcedir.tar.gz"]
        assert all(k in created["PipelineDefinition"] for k in keys)
        assert sm.describe_model_package_group(ModelPackageGroupName="df-test-models")["ModelPackageGroupName"] == "df-test-models"

    # a second run whose definition differs: another key prefix, so other code and output URIs
    second = papermill(tmp_path/"second.ipynb", aws, **common, base_job_prefix="df-test-v2", parameters={"Epochs": 5})
    assert second.returncode == 0, second.stderr[-3000:]
    with environ(aws):
        sm = boto3.client("sagemaker", region_name=REGION)
        updated = sm.describe_pipeline(PipelineName="df-test")
        assert updated["PipelineArn"] == created["PipelineArn"]
        assert len(sm.list_pipelines()["PipelineSummaries"]) == 1  # updated, not created again
        # the stored definition is the new one: it names the code uploaded under the new prefix, not the old code
        assert json.loads(updated["PipelineDefinition"]) != definition
        new_keys = [o["Key"] for o in s3.list_objects_v2(Bucket=BUCKET, Prefix="df-test-v2/code/")["Contents"]]
        assert sorted(k.rsplit("/", 1)[1] for k in new_keys) == ["launch.py", "sourcedir.tar.gz"]
        assert all(k in updated["PipelineDefinition"] for k in new_keys)
        assert not any(k in updated["PipelineDefinition"] for k in keys)
        assert f"s3://{BUCKET}/df-test-v2/Train" in updated["PipelineDefinition"]
        assert f"s3://{BUCKET}/deepfake-mlops/" not in updated["PipelineDefinition"]
        runs = sm.list_pipeline_executions(PipelineName="df-test")["PipelineExecutionSummaries"]
        assert len(runs) == 2
        given = [{p["Name"]: p["Value"] for p in sm.list_pipeline_parameters_for_execution(
                  PipelineExecutionArn=r["PipelineExecutionArn"])["PipelineParameters"]} for r in runs]
        assert {"Epochs": "3", "MinAuc": "0.75"} in given and {"Epochs": "5"} in given

    report = notebook_text(tmp_path/"second.ipynb")
    assert "execution: arn:aws:sagemaker" in report
    assert "step list is not available" in report  # moto lacks ListPipelineExecutionSteps: said, not hidden
    assert "No evaluation.json for this execution" in report  # no step ran, so there are no metrics to show
    assert "has no model package yet" in report


def test_bad_parameter_fails_the_run_with_a_readable_message(aws, tmp_path):
    proc = papermill(tmp_path/"bad.ipynb", aws, target="sagemaker", region=REGION, role_arn=ROLE, default_bucket=BUCKET,
                     pipeline_name="df-bad", parameters={"Epoch": 3})
    assert proc.returncode != 0
    assert "unknown pipeline parameter 'Epoch'" in notebook_text(tmp_path/"bad.ipynb")
    with environ(aws):
        names = [p["PipelineName"] for p in boto3.client("sagemaker", region_name=REGION).list_pipelines()["PipelineSummaries"]]
    assert "df-bad" not in names  # checked before anything was created


def test_buildspec_runs_in_a_simulated_codebuild_environment(aws, tmp_path):
    spec = yaml.safe_load((REPO/"codebuild-buildspec.yml").read_text())
    assert spec["phases"]["install"]["runtime-versions"]["python"] == 3.11
    report = tmp_path/"pipeline-report"
    env = {**aws, "SAGEMAKER_PIPELINE_ROLE_ARN": ROLE, "SAGEMAKER_PROJECT_NAME": "cbproj", "SAGEMAKER_PROJECT_ID": "p-42",
           "ARTIFACT_BUCKET": BUCKET, "AWS_REGION": REGION, "REPORT_DIR": str(report), "CODEBUILD_BUILD_ID": "cbproj:1"}
    ok, log = run_buildspec(REPO/"codebuild-buildspec.yml", env, REPO)
    assert ok, "\n".join(log)
    assert (report/"run_pipeline.ipynb").exists() and (report/"run_pipeline.html").exists()
    assert "cbproj-deepfake-detection" in (report/"run_pipeline.html").read_text()
    with environ(aws):
        sm = boto3.client("sagemaker", region_name=REGION)
        assert sm.list_pipeline_executions(PipelineName="cbproj-deepfake-detection")["PipelineExecutionSummaries"]


def test_buildspec_fails_the_build_when_the_run_fails_and_still_writes_the_report(aws, tmp_path):
    report = tmp_path/"pipeline-report"
    env = {**aws, "SAGEMAKER_PIPELINE_ROLE_ARN": ROLE, "SAGEMAKER_PROJECT_NAME": "cbfail", "SAGEMAKER_PROJECT_ID": "p-43",
           "ARTIFACT_BUCKET": "no-such-bucket", "AWS_REGION": REGION, "REPORT_DIR": str(report)}
    ok, log = run_buildspec(REPO/"codebuild-buildspec.yml", env, REPO)
    assert not ok
    assert (report/"run_pipeline.html").exists()  # post_build rendered the failed run
    assert "NoSuchBucket" in (report/"run_pipeline.html").read_text()
