"""Deployment that follows approval, against a moto server on loopback: the templates lint clean, the endpoint stacks
create and update the SageMaker resources, the approval rule matches what it should, and the deployment build's
phases run as CodeBuild runs them, with the staging endpoint answered by the real model.

Where moto falls short, the tests say so and check the rest: its CloudFormation has no
AWS::ApplicationAutoScaling resources (prod's scalable target and policy are skipped without error), nor
AWS::CodePipeline or AWS::CodeBuild ones (the deployment stack is linted and its rule's pattern tested, not created),
and no TestEventPattern (the pattern is tested through its event bus, which matches rules);
it names an endpoint itself instead of taking the template's EndpointName; and it answers InvokeEndpoint with a
fixed body, so the staging endpoint's answers come from `SageMakerHosting` (tests/aws.py), which runs the model the
endpoint's configuration names, under the environment the stack gave it."""
from __future__ import annotations
import copy, json, subprocess, sys, urllib.request
from pathlib import Path

import pytest

from aws import ACCOUNT, REGION, SageMakerHosting, environ, moto_server, run_buildspec
from helpers import describe

boto3 = pytest.importorskip("boto3", reason="boto3 is not installed: pip install -e '.[dev]'")

from deepfake_mlops.core import REALTIME_MAX_BODY
from deepfake_mlops.deploy import STAGES
from deepfake_mlops.stacks import (approval_pattern, deploy_stack, parameter_files, read_parameter_file, read_template,
                                   rollback_parameters, stack_parameters_now, template_path)

REPO = Path(__file__).resolve().parents[1]
GROUP, ROLE = "deepfake-detection", f"arn:aws:iam::{ACCOUNT}:role/DeepfakeSageMaker"
BUCKET, CAPTURE = "example-artifacts", "s3://example-artifacts/deepfake-detection/data-capture"
EVENT = json.loads((REPO/"tests"/"fixtures"/"model-package-state-change.json").read_text())


def test_templates_lint_clean():
    # no rule is ignored: a warning fails this test as an error does
    proc = subprocess.run([str(Path(sys.executable).parent/"cfn-lint"), str(template_path("endpoint")), str(template_path("deployment"))],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0 and proc.stdout.strip() == "", proc.stdout + proc.stderr


@pytest.fixture(scope="module")
def moto_env():
    with moto_server() as env: yield env


def _package(sm, s3, model_tar:Path|None=None) -> dict:
    "Register an Approved model package in moto (its model.tar.gz in moto's S3 when given); returns its summary."
    key = f"{GROUP}/model-{len(sm.list_model_packages(ModelPackageGroupName=GROUP)['ModelPackageSummaryList'])}.tar.gz"
    if model_tar: s3.upload_file(str(model_tar), BUCKET, key)
    spec = dict(Containers=[dict(Image=f"{ACCOUNT}.dkr.ecr.{REGION}.amazonaws.com/pytorch-inference:2.6.0-cpu-py312",
                                 ModelDataUrl=f"s3://{BUCKET}/{key}")],
                SupportedContentTypes=["video/mp4", "application/json"], SupportedResponseMIMETypes=["application/json"])
    arn = sm.create_model_package(ModelPackageGroupName=GROUP, InferenceSpecification=spec, ModelApprovalStatus="Approved")["ModelPackageArn"]
    return next(p for p in sm.list_model_packages(ModelPackageGroupName=GROUP)["ModelPackageSummaryList"] if p["ModelPackageArn"] == arn)


@pytest.fixture
def aws(moto_env):
    "A fresh moto state with the artifact bucket and the model package group: (environment, clients by service)."
    urllib.request.urlopen(urllib.request.Request(moto_env["AWS_ENDPOINT_URL"] + "/moto-api/reset", method="POST")).read()
    with environ(moto_env):
        clients = {name: boto3.client(name, region_name=REGION) for name in ("sagemaker", "cloudformation", "s3", "events")}
    clients["s3"].create_bucket(Bucket=BUCKET, CreateBucketConfiguration={"LocationConstraint": REGION})
    clients["sagemaker"].create_model_package_group(ModelPackageGroupName=GROUP)
    return moto_env, clients


def _served(sm, cfn, stack:str) -> tuple[dict, dict]:
    "The endpoint configuration and the model the stack's endpoint runs."
    endpoint = {o["OutputKey"]: o["OutputValue"] for o in cfn.describe_stacks(StackName=stack)["Stacks"][0]["Outputs"]}["EndpointName"]
    config = sm.describe_endpoint_config(EndpointConfigName=sm.describe_endpoint(EndpointName=endpoint)["EndpointConfigName"])
    return config, sm.describe_model(ModelName=config["ProductionVariants"][0]["ModelName"])


def test_stage_stacks_create_update_and_roll_back_the_endpoint(aws, tmp_path):
    _, c = aws
    sm, cfn = c["sagemaker"], c["cloudformation"]
    first = _package(sm, c["s3"])
    files = parameter_files(tmp_path, first, ROLE, CAPTURE, GROUP)
    for stage in STAGES:
        done = deploy_stack(cfn, read_parameter_file(files[stage]), say=lambda *_: None)
        assert done["action"] == "create" and done["status"] == "CREATE_COMPLETE", done
        config, model = _served(sm, cfn, done["stack"])
        variant, capture = config["ProductionVariants"][0], config["DataCaptureConfig"]
        s = STAGES[stage]
        assert (variant["InstanceType"], variant["InitialInstanceCount"]) == (s["instance_type"], s["instance_count"])
        assert capture["InitialSamplingPercentage"] == s["capture_percent"] and capture["DestinationS3Uri"] == CAPTURE
        assert model["PrimaryContainer"]["ModelPackageName"] == first["ModelPackageArn"] and model["ExecutionRoleArn"] == ROLE
        assert model["PrimaryContainer"]["Environment"]["DEEPFAKE_MLOPS_MAX_BODY"] == str(REALTIME_MAX_BODY)
        kinds = {r["ResourceType"] for r in cfn.list_stack_resources(StackName=done["stack"])["StackResourceSummaries"]}
        assert {"AWS::SageMaker::Model", "AWS::SageMaker::EndpointConfig", "AWS::SageMaker::Endpoint"} <= kinds
    # prod scales, staging does not: the template's condition; moto creates neither scaling resource (see above)
    scaling = {k for k, v in read_template()["Resources"].items() if v.get("Condition") == "Autoscaling"}
    assert scaling == {"ScalableTarget", "ScalingPolicy"}
    assert stack_parameters_now(cfn, f"{GROUP}-prod")["AutoscalingMinInstances"] == str(STAGES["prod"]["autoscaling"]["min_instances"])
    assert stack_parameters_now(cfn, f"{GROUP}-staging")["AutoscalingMinInstances"] == "0"

    # a newer approved version updates prod in place: same endpoint, a new model and configuration
    before, _ = _served(sm, cfn, f"{GROUP}-prod")
    second = _package(sm, c["s3"])
    done = deploy_stack(cfn, read_parameter_file(parameter_files(tmp_path/"v2", second, ROLE, CAPTURE, GROUP)["prod"]), say=lambda *_: None)
    after, model = _served(sm, cfn, f"{GROUP}-prod")
    assert done["action"] == "update" and done["status"] == "UPDATE_COMPLETE"
    assert model["PrimaryContainer"]["ModelPackageName"] == second["ModelPackageArn"]
    assert after["EndpointConfigName"] != before["EndpointConfigName"]

    # rolling back is the approved version before the one prod serves, with prod's other parameters unchanged
    back = rollback_parameters(sm, cfn, "prod", GROUP)
    assert back["Parameters"]["ModelPackageArn"] == first["ModelPackageArn"]
    assert {k: v for k, v in back["Parameters"].items() if not k.startswith("ModelPackage")} == \
           {k: v for k, v in stack_parameters_now(cfn, f"{GROUP}-prod").items() if not k.startswith("ModelPackage")}
    deploy_stack(cfn, back, say=lambda *_: None)
    assert _served(sm, cfn, f"{GROUP}-prod")[1]["PrimaryContainer"]["ModelPackageName"] == first["ModelPackageArn"]
    with pytest.raises(ValueError, match="no older version of 'deepfake-detection' is Approved"):
        rollback_parameters(sm, cfn, "prod", GROUP)


def test_the_approval_rule_starts_a_deployment_for_this_group_s_approvals_only(aws):
    # moto has no TestEventPattern; its event bus does match rules: the rule's pattern routes matching events to a queue
    env, c = aws
    with environ(env): sqs = boto3.client("sqs", region_name=REGION)
    queue = sqs.create_queue(QueueName="deployments")["QueueUrl"]
    arn = sqs.get_queue_attributes(QueueUrl=queue, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
    events = c["events"]
    events.put_rule(Name="approval", EventPattern=json.dumps(approval_pattern(GROUP)))
    events.put_targets(Rule="approval", Targets=[{"Id": "deployment", "Arn": arn}])
    def starts(event) -> bool:
        sent = events.put_events(Entries=[dict(Source=event["source"], DetailType=event["detail-type"], Detail=json.dumps(event["detail"]),
                                               Resources=event["resources"])])
        assert sent["FailedEntryCount"] == 0
        got = sqs.receive_message(QueueUrl=queue, WaitTimeSeconds=1).get("Messages", [])
        for m in got: sqs.delete_message(QueueUrl=queue, ReceiptHandle=m["ReceiptHandle"])
        return bool(got)
    assert starts(EVENT)
    for change in ({"ModelApprovalStatus": "Rejected"}, {"ModelApprovalStatus": "PendingManualApproval"},
                   {"ModelPackageGroupName": "another-group"}):
        other = copy.deepcopy(EVENT); other["detail"].update(change)
        assert not starts(other), change
    other = copy.deepcopy(EVENT); other["detail-type"] = "SageMaker Model State Change"
    assert not starts(other)
    assert starts(EVENT)  # the queue still takes approvals: the refusals above were the pattern's
    # the rule starts the deployment pipeline, as the role it is given may
    rule = read_template("deployment")["Resources"]["ApprovalRule"]["Properties"]
    assert rule["Targets"][0]["RoleArn"] == {"Fn::GetAtt": ["EventsRole", "Arn"]}
    assert "codepipeline" in rule["Targets"][0]["Arn"]["Fn::Sub"]


@pytest.fixture
def build_env(aws, demo_model, demo_clips, tmp_path):
    "The deployment build's environment: moto for AWS, SageMakerHosting for the endpoints, a demo model approved, a sample video."
    env, c = aws
    _, tar = demo_model
    package = _package(c["sagemaker"], c["s3"], tar)
    sample = sorted((demo_clips/"FAKE").glob("*.mp4"))[0] if (demo_clips/"FAKE").is_dir() else sorted(demo_clips.rglob("*.mp4"))[-1]
    c["s3"].upload_file(str(sample), BUCKET, "samples/clip.mp4")
    return package, dict(env, MODEL_PACKAGE_GROUP_NAME=GROUP, SAGEMAKER_EXECUTION_ROLE_ARN=ROLE, DATA_CAPTURE_S3_URI=CAPTURE,
                         STACK_ROLE_ARN=f"arn:aws:iam::{ACCOUNT}:role/DeepfakeStacks",
                         STAGING_TEST_VIDEO_S3_URI=f"s3://{BUCKET}/samples/clip.mp4", STAGING_TEST_VIDEO_LABEL="",
                         BUILD_DIR=str(tmp_path/"staging-out"/"deploy-build"), CODEBUILD_BUILD_ID="deepfake-detection-deploy:1")


def test_deployment_build_deploys_tests_staging_then_prod_in_simulated_codebuild(build_env, aws, tmp_path):
    package, env = build_env
    _, c = aws
    with SageMakerHosting(env, tmp_path/"hosting") as hosting:
        ok, log = run_buildspec(REPO/"deploy-buildspec.yml", dict(env, AWS_ENDPOINT_URL_SAGEMAKER_RUNTIME=hosting.url, STAGE="staging"), REPO)
        assert ok, "\n".join(log)
        out = Path(env["BUILD_DIR"])
        pinned = {stage: read_parameter_file(out/f"{stage}.json")["Parameters"]["ModelPackageArn"] for stage in STAGES}
        assert pinned == {"staging": package["ModelPackageArn"], "prod": package["ModelPackageArn"]}
        report = json.loads((out/"staging-test.json").read_text())
        assert report["passed"] and [r["case"] for r in report["cases"]] == ["video", "image", "not a video", "unsupported type"], report
        assert report["cases"][0]["request"].startswith("JSON s3_uri s3://")  # the video by S3 URI, read by the endpoint
        endpoint = {o["OutputKey"]: o["OutputValue"] for o in c["cloudformation"].describe_stacks(StackName=f"{GROUP}-staging")["Stacks"][0]["Outputs"]}["EndpointName"]
        assert set(hosting.called) == {endpoint}
        # the container ran under the environment the stack gave the model: it may read the sample, and only it
        (_, _, container_env), = hosting.containers.values()
        assert container_env["DEEPFAKE_MLOPS_ALLOW_S3"] == env["STAGING_TEST_VIDEO_S3_URI"]
        stacks = {s["StackName"] for s in c["cloudformation"].describe_stacks()["Stacks"]}
        assert stacks == {f"{GROUP}-staging"}  # prod waits for the manual approval

        # after the approval: the prod action, with the staging build's output as its secondary source
        ok, log = run_buildspec(REPO/"deploy-buildspec.yml", dict(env, STAGE="prod", CODEBUILD_SRC_DIR_StagingBuild=str(out.parent)), REPO)
        assert ok, "\n".join(log)
        assert stack_parameters_now(c["cloudformation"], f"{GROUP}-prod")["ModelPackageArn"] == package["ModelPackageArn"]


def test_deployment_build_fails_when_the_staging_endpoint_answers_wrongly(build_env, aws):
    # without SageMakerHosting, moto answers every request with the same fixed body: not a verdict
    _, env = build_env
    ok, log = run_buildspec(REPO/"deploy-buildspec.yml", dict(env, STAGE="staging"), REPO)
    assert not ok
    report = json.loads((Path(env["BUILD_DIR"])/"staging-test.json").read_text())
    assert not report["passed"] and not any(r["passed"] for r in report["cases"])
    assert "wrong answers to video, image, not a video, unsupported type" in log[-1], log[-1]
