"`deepfake-mlops deploy` against a moto server on loopback: which package it picks, what it creates and updates, its errors."
from __future__ import annotations
import json, os, subprocess, sys, time, urllib.error, urllib.request
from pathlib import Path

import pytest

from helpers import cli_command, describe, run_cli

boto3 = pytest.importorskip("boto3", reason="boto3 is not installed: pip install -e '.[dev]'")
from botocore.awsrequest import AWSResponse
from botocore.config import Config
from botocore.exceptions import ClientError

MOTO_SERVER = Path(sys.executable).parent/"moto_server"
REGION, GROUP = "eu-west-1", "deepfake-detection"
ROLE = "arn:aws:iam::123456789012:role/DeepfakeSageMaker"
SPEC = dict(Containers=[dict(Image="123456789012.dkr.ecr.eu-west-1.amazonaws.com/deepfake-inference:1",
                             ModelDataUrl="s3://example-bucket/model.tar.gz")],
            SupportedContentTypes=["video/mp4", "application/json"], SupportedResponseMIMETypes=["application/json"])


@pytest.fixture(scope="module")
def moto_url(free_port):
    "A moto server (`moto_server -H 127.0.0.1 -p PORT`) for this module's tests."
    if not MOTO_SERVER.exists(): pytest.skip(f"{MOTO_SERVER} not found: pip install -e '.[dev]' (moto[server])")
    port = free_port()
    proc = subprocess.Popen([str(MOTO_SERVER), "-H", "127.0.0.1", "-p", str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    url, deadline = f"http://127.0.0.1:{port}", time.time() + 60
    while True:
        try:
            urllib.request.urlopen(url + "/moto-api/", timeout=2).read(); break
        except (urllib.error.URLError, ConnectionError): pass
        if proc.poll() is not None: pytest.fail(f"moto_server exited {proc.returncode}: {proc.stderr.read()}")
        if time.time() > deadline: proc.kill(); pytest.fail("moto_server did not answer within 60 s")
        time.sleep(0.2)
    yield url
    proc.terminate(); proc.wait(10)


@pytest.fixture
def aws(moto_url, monkeypatch, tmp_path):
    "A fresh moto state, and this test's environment pointed at it with dummy credentials (no profile, no role)."
    urllib.request.urlopen(urllib.request.Request(moto_url + "/moto-api/reset", method="POST")).read()
    env = dict(AWS_ENDPOINT_URL=moto_url, AWS_ACCESS_KEY_ID="testing", AWS_SECRET_ACCESS_KEY="testing",
               AWS_DEFAULT_REGION=REGION, AWS_CONFIG_FILE=str(tmp_path/"none"), AWS_SHARED_CREDENTIALS_FILE=str(tmp_path/"none"))
    for k in ("AWS_PROFILE", "AWS_REGION", "AWS_SESSION_TOKEN", "SAGEMAKER_EXECUTION_ROLE_ARN"): monkeypatch.delenv(k, raising=False)
    for k, v in env.items(): monkeypatch.setenv(k, v)
    return env


def _client(**kw):
    return boto3.client("sagemaker", region_name=REGION, **kw)


def _register(sm, statuses, group=GROUP) -> list[str]:
    "A model package group with one version per status, oldest first; returns their ARNs."
    sm.create_model_package_group(ModelPackageGroupName=group)
    return [sm.create_model_package(ModelPackageGroupName=group, InferenceSpecification=SPEC, ModelApprovalStatus=s)["ModelPackageArn"]
            for s in statuses]


def _live(sm, endpoint):
    "The endpoint, its configuration and the model package that configuration's model runs."
    live = sm.describe_endpoint(EndpointName=endpoint)
    config = sm.describe_endpoint_config(EndpointConfigName=live["EndpointConfigName"])
    model = sm.describe_model(ModelName=config["ProductionVariants"][0]["ModelName"])
    return live, config, model["PrimaryContainer"]["ModelPackageName"]


def test_deploy_picks_the_newest_approved_package(aws):
    sm = _client()
    old, newer, pending = _register(sm, ["Approved", "Approved", "PendingManualApproval"])
    from deepfake_mlops.deploy import approved_packages
    assert [p["ModelPackageArn"] for p in approved_packages(sm, GROUP, page_size=1)] == [newer, old]  # one per page
    proc = run_cli("deploy", "--stage", "staging", "--role", ROLE, "--bucket", "example-bucket", env=aws)
    assert proc.returncode == 0, describe(proc)
    assert f"version 2 is the newest Approved package: {newer}" in proc.stdout, proc.stdout
    live, config, package = _live(sm, f"{GROUP}-staging")
    assert package == newer and live["EndpointStatus"] == "InService"
    variant = config["ProductionVariants"][0]
    assert (variant["InstanceType"], variant["InitialInstanceCount"]) == ("ml.m5.large", 1)
    capture = config["DataCaptureConfig"]
    assert capture["EnableCapture"] and capture["DestinationS3Uri"] == f"s3://example-bucket/{GROUP}/data-capture"
    # answers only: request bodies are people's videos, captured only when asked (deploy --capture-inputs)
    assert [o["CaptureMode"] for o in capture["CaptureOptions"]] == ["Output"]


def test_prod_has_its_own_endpoint_and_settings(aws):
    sm = _client()
    _, newer = _register(sm, ["Approved", "Approved"])
    for stage in ("staging", "prod"):
        proc = run_cli("deploy", "--stage", stage, "--role", ROLE, "--capture-s3-uri", "s3://example-bucket/capture", env=aws)
        assert proc.returncode == 0, describe(proc)
    _, staging, _ = _live(sm, f"{GROUP}-staging")
    _, prod, package = _live(sm, f"{GROUP}-prod")
    assert package == newer
    assert (prod["ProductionVariants"][0]["InstanceType"], prod["ProductionVariants"][0]["InitialInstanceCount"]) == ("ml.c5.2xlarge", 2)
    assert prod["EndpointConfigName"] != staging["EndpointConfigName"]
    assert prod["DataCaptureConfig"]["DestinationS3Uri"] == "s3://example-bucket/capture"


def test_dry_run_reads_and_changes_nothing(aws):
    sm = _client()
    _register(sm, ["Approved"])
    proc = run_cli("deploy", "--stage", "staging", "--role", ROLE, "--bucket", "example-bucket", "--dry-run", env=aws)
    assert proc.returncode == 0, describe(proc)
    assert f"create endpoint {GROUP}-staging" in proc.stdout and "dry run: nothing was changed" in proc.stdout, proc.stdout
    assert sm.list_models()["Models"] == [] and sm.list_endpoint_configs()["EndpointConfigs"] == []
    assert sm.list_endpoints()["Endpoints"] == []


def test_moto_still_lacks_update_endpoint(aws):
    "The stand-in below exists because moto 5.2 answers UpdateEndpoint with HTTP 500; this fails once moto implements it."
    sm = _client(config=Config(retries={"max_attempts": 1}))
    with pytest.raises(ClientError) as e: sm.update_endpoint(EndpointName="any", EndpointConfigName="any")
    assert e.value.response["ResponseMetadata"]["HTTPStatusCode"] == 500, "moto implements UpdateEndpoint now: drop _play_update_endpoint"


def _play_update_endpoint(sm, calls:list):
    """Answer the UpdateEndpoint calls of `sm` as SageMaker would, since moto 5.2 does not implement the operation.

    The request still goes through botocore (validated and serialized); it is recorded in `calls`, and its effect, the
    endpoint of that name running the new configuration, is made on the moto server with CreateEndpoint (moto's
    CreateEndpoint replaces an endpoint of the same name)."""
    backend = _client()
    def update_endpoint(params, **_):
        request = json.loads(params["body"])
        calls.append(request)
        arn = backend.create_endpoint(EndpointName=request["EndpointName"], EndpointConfigName=request["EndpointConfigName"])["EndpointArn"]
        return AWSResponse(params["url"], 200, {}, None), {"EndpointArn": arn}
    sm.meta.events.register("before-call.sagemaker.UpdateEndpoint", update_endpoint)


def test_second_deploy_updates_the_same_endpoint(aws):
    from deepfake_mlops.deploy import deploy
    sm = _client()
    _, newer, newest = _register(sm, ["Approved", "Approved", "PendingManualApproval"])
    calls = []
    _play_update_endpoint(sm, calls)
    first = deploy("staging", ROLE, "s3://example-bucket/capture", client=sm)
    assert first["action"] == "create" and _live(sm, f"{GROUP}-staging")[2] == newer
    assert deploy("staging", ROLE, "s3://example-bucket/capture", client=sm)["action"] == "unchanged"
    sm.update_model_package(ModelPackageArn=newest, ModelApprovalStatus="Approved")
    second = deploy("staging", ROLE, "s3://example-bucket/capture", client=sm)
    assert second["action"] == "update" and second["package_arn"] == newest
    new_config = second["endpoint_config"]["EndpointConfigName"]
    assert calls == [{"EndpointName": f"{GROUP}-staging", "EndpointConfigName": new_config}]  # in place, under the same name
    live, config, package = _live(sm, f"{GROUP}-staging")
    assert live["EndpointConfigName"] == new_config != first["endpoint_config"]["EndpointConfigName"]
    assert package == newest and config["DataCaptureConfig"]["DestinationS3Uri"] == "s3://example-bucket/capture"
    assert [e["EndpointName"] for e in sm.list_endpoints()["Endpoints"]] == [f"{GROUP}-staging"]


def test_nothing_approved_is_a_clear_error_and_a_nonzero_exit(aws):
    sm = _client()
    _register(sm, ["PendingManualApproval", "Rejected"])
    proc = run_cli("deploy", "--stage", "prod", "--role", ROLE, "--bucket", "example-bucket", env=aws)
    assert proc.returncode == 2, describe(proc)
    assert f"model package group '{GROUP}' in region {REGION} has no Approved model package (1 PendingManualApproval, 1 Rejected)" \
        in proc.stderr, describe(proc)
    assert "Traceback" not in proc.stderr
    proc = run_cli("deploy", "--stage", "prod", "--group", "no-such-group", "--role", ROLE, "--bucket", "example-bucket", env=aws)
    assert proc.returncode == 2 and "'no-such-group' has no model packages" in proc.stderr, describe(proc)
    assert sm.list_endpoints()["Endpoints"] == [] and sm.list_models()["Models"] == []


def test_missing_arguments_are_named_before_any_aws_call(aws):
    env = {k: v for k, v in os.environ.items() if k not in ("AWS_DEFAULT_REGION", "AWS_REGION")}
    cases = [(["--role", ROLE, "--bucket", "example-bucket"], env, "no AWS region: pass --region or set AWS_REGION"),
             (["--role", ROLE, "--bucket", "b"], os.environ, "--bucket 'b' is not an S3 bucket name"),
             (["--role", ROLE, "--capture-s3-uri", "example-bucket/capture"], os.environ, "'example-bucket/capture' is not an S3 URI"),
             (["--bucket", "example-bucket"], os.environ, "role None is not an IAM role ARN"),
             (["--role", ROLE], os.environ, "--capture-s3-uri s3://BUCKET/PREFIX or --bucket BUCKET")]
    for args, environment, message in cases:
        proc = subprocess.run(cli_command("deploy", "--stage", "staging", *args), capture_output=True, text=True, env=environment, timeout=120)
        assert proc.returncode == 2 and message in proc.stderr, (args, describe(proc))
