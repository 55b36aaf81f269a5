"Asynchronous endpoints against a moto server on loopback: `deploy --async`, and `predict-endpoint` uploading, invoking and waiting."
from __future__ import annotations
import io, json, threading, time, urllib.request
from pathlib import Path

import pytest

from aws import ACCOUNT, REGION, environ, moto_server
from helpers import describe, run_cli

boto3 = pytest.importorskip("boto3", reason="boto3 is not installed: pip install -e '.[dev]'")
from botocore.awsrequest import AWSResponse
from botocore.config import Config
from botocore.exceptions import ClientError
from botocore.response import StreamingBody

from deepfake_mlops.core import ASYNC_MAX_BODY, ASYNC_TIMEOUT_S, serving_environment
from deepfake_mlops.deploy import REALTIME_REQUEST_MAX, STAGES, deploy, predict_endpoint

GROUP, ROLE = "deepfake-detection", f"arn:aws:iam::{ACCOUNT}:role/DeepfakeSageMaker"
BUCKET, CAPTURE = "example-bucket", "s3://example-bucket/capture"
OUTPUT, INPUT = "s3://example-bucket/async/out", "s3://example-bucket/async/in"
SPEC = dict(Containers=[dict(Image=f"{ACCOUNT}.dkr.ecr.{REGION}.amazonaws.com/deepfake-inference:1",
                             ModelDataUrl="s3://example-bucket/model.tar.gz")],
            SupportedContentTypes=["video/mp4", "application/json"], SupportedResponseMIMETypes=["application/json"])
VERDICT = dict(label="FAKE", probability=0.91, threshold=0.5, faces_found=8, frames_examined=8, frames=[], model_version="2")


@pytest.fixture(scope="module")
def moto_env():
    "A moto server for this module, and the environment that points boto3 (here and in subprocesses) at it."
    with moto_server() as env: yield env


@pytest.fixture
def aws(moto_env):
    "A fresh moto state with an Approved model package and the example bucket: (environment, clients by service)."
    urllib.request.urlopen(urllib.request.Request(moto_env["AWS_ENDPOINT_URL"] + "/moto-api/reset", method="POST")).read()
    with environ(moto_env):
        clients = {name: boto3.client(name, region_name=REGION) for name in ("sagemaker", "sagemaker-runtime", "s3")}
    sm = clients["sagemaker"]
    sm.create_model_package_group(ModelPackageGroupName=GROUP)
    for status in ("Approved", "Approved"):
        sm.create_model_package(ModelPackageGroupName=GROUP, InferenceSpecification=SPEC, ModelApprovalStatus=status)
    clients["s3"].create_bucket(Bucket=BUCKET, CreateBucketConfiguration={"LocationConstraint": REGION})
    return moto_env, clients


@pytest.fixture(scope="module")
def videos(ffpp) -> list[Path]:
    "The three smallest real videos of the FaceForensics++ sample."
    found = sorted(ffpp.rglob("*.mp4"), key=lambda p: p.stat().st_size)
    if len(found) < 3: pytest.skip(f"{ffpp} holds fewer than 3 .mp4 videos")
    return found[:3]


def _moto_answers(env, *answers):
    "Queue what moto's InvokeEndpointAsync answers, in order: (is_failure, text) pairs (it writes each to S3 at once)."
    results = [dict(is_failure=failed, data=text) for failed, text in answers]
    request = urllib.request.Request(f"{env['AWS_ENDPOINT_URL']}/moto-api/static/sagemaker/async-endpoint-results", method="POST",
                                     data=json.dumps(dict(account_id=ACCOUNT, region=REGION, results=results)).encode())
    urllib.request.urlopen(request).read()


def _recorded(client, operation) -> list[dict]:
    "The parameters of every `operation` call `client` makes, as botocore sends them (the call itself still goes to moto)."
    calls = []
    client.meta.events.register(f"provide-client-params.{client.meta.service_model.service_id.hyphenize()}.{operation}",
                                lambda params, **_: calls.append(dict(params)))
    return calls


def _answers_held_back(runtime, s3, delays:list):
    """Make each InvokeEndpointAsync answer appear in S3 after the next of `delays` seconds (None: never), as a busy endpoint's.

    moto writes its answer object at once, during the call; this takes the object away right after the call and puts it
    back later, so the client has to keep looking."""
    timers = []
    def hold(parsed, **_):
        delay = delays.pop(0)
        for where in (parsed["OutputLocation"], parsed["FailureLocation"]):
            bucket, key = where.removeprefix("s3://").split("/", 1)
            if s3.list_objects_v2(Bucket=bucket, Prefix=key)["KeyCount"] == 0: continue
            body = s3.get_object(Bucket=bucket, Key=key)["Body"].read()
            s3.delete_object(Bucket=bucket, Key=key)
            if delay is not None:
                timers.append(threading.Timer(delay, s3.put_object, kwargs=dict(Bucket=bucket, Key=key, Body=body)))
                timers[-1].start()
    runtime.meta.events.register("after-call.sagemaker-runtime.InvokeEndpointAsync", hold)
    return timers


def _deploy_async(clients, **kw) -> dict:
    return deploy("staging", ROLE, CAPTURE, client=clients["sagemaker"], asynchronous=True, output_s3_uri=OUTPUT, **kw)


def _live(sm, endpoint):
    "The endpoint's configuration and model, as SageMaker (moto) describes them."
    config = sm.describe_endpoint_config(EndpointConfigName=sm.describe_endpoint(EndpointName=endpoint)["EndpointConfigName"])
    return config, sm.describe_model(ModelName=config["ProductionVariants"][0]["ModelName"])


def test_deploy_async_creates_its_own_endpoint_with_the_async_config_and_the_container_environment(aws):
    env, clients = aws
    sm = clients["sagemaker"]
    packages = sm.list_model_packages(ModelPackageGroupName=GROUP, SortBy="CreationTime", SortOrder="Descending")
    newest = packages["ModelPackageSummaryList"][0]
    proc = run_cli("deploy", "--stage", "staging", "--role", ROLE, "--capture-s3-uri", CAPTURE, env=env)
    assert proc.returncode == 0, describe(proc)
    proc = run_cli("deploy", "--stage", "staging", "--role", ROLE, "--capture-s3-uri", CAPTURE, "--async",
                   "--output-s3-uri", OUTPUT, env=env)
    assert proc.returncode == 0, describe(proc)
    environment = serving_environment(max_body=ASYNC_MAX_BODY, timeout_s=ASYNC_TIMEOUT_S)
    assert " ".join(f"{k}={v}" for k, v in environment.items()) in proc.stdout, proc.stdout  # the plan shows the environment
    assert f"answers under {OUTPUT}, failures under {OUTPUT}/failures" in proc.stdout, proc.stdout
    config, model = _live(sm, f"{GROUP}-staging-async")
    concurrency = STAGES["staging"]["async_concurrency"]
    assert config["AsyncInferenceConfig"] == {"OutputConfig": {"S3OutputPath": OUTPUT, "S3FailurePath": f"{OUTPUT}/failures"},
                                              "ClientConfig": {"MaxConcurrentInvocationsPerInstance": concurrency}}
    assert model["PrimaryContainer"] == {"ModelPackageName": newest["ModelPackageArn"], "Environment": environment}
    assert int(environment["TS_MAX_REQUEST_SIZE"]) >= 1 << 30  # TorchServe lets a 1 GB video in
    assert config["DataCaptureConfig"]["DestinationS3Uri"] == CAPTURE
    realtime, realtime_model = _live(sm, f"{GROUP}-staging")  # still there, unchanged: no async block, no environment
    assert "AsyncInferenceConfig" not in realtime and "Environment" not in realtime_model["PrimaryContainer"]
    assert realtime_model["PrimaryContainer"]["ModelPackageName"] == newest["ModelPackageArn"]
    proc = run_cli("deploy", "--stage", "prod", "--role", ROLE, "--capture-s3-uri", CAPTURE, "--async", "--output-s3-uri", OUTPUT,
                   "--failure-s3-uri", "s3://example-bucket/async/failed", "--max-concurrent-invocations", "3", env=env)
    assert proc.returncode == 0, describe(proc)
    prod, _ = _live(sm, f"{GROUP}-prod-async")
    assert prod["AsyncInferenceConfig"]["OutputConfig"]["S3FailurePath"] == "s3://example-bucket/async/failed"
    assert prod["AsyncInferenceConfig"]["ClientConfig"] == {"MaxConcurrentInvocationsPerInstance": 3}
    assert prod["ProductionVariants"][0]["InstanceType"] == STAGES["prod"]["instance_type"]


def test_wrong_async_arguments_are_named_before_any_aws_call(aws, tmp_path):
    env, clients = aws
    # no region: a check made after the first AWS client would say "no AWS region" instead
    env = {k: v for k, v in env.items() if k not in ("AWS_REGION", "AWS_DEFAULT_REGION")}
    deploy_args = ["deploy", "--stage", "staging", "--role", ROLE, "--capture-s3-uri", CAPTURE]
    video = tmp_path/"clip.mp4"
    video.write_bytes(b"video")
    cases = [(deploy_args + ["--async"], "needs output_s3_uri (--output-s3-uri s3://BUCKET/PREFIX)"),
             (deploy_args + ["--async", "--output-s3-uri", "example-bucket/out"],
              "(--output-s3-uri) 'example-bucket/out' is not an S3 URI"),
             (deploy_args + ["--async", "--output-s3-uri", OUTPUT, "--failure-s3-uri", "failed"],
              "(--failure-s3-uri) 'failed' is not an S3 URI"),
             (deploy_args + ["--output-s3-uri", OUTPUT], "only for an asynchronous endpoint; pass asynchronous=True (--async)"),
             (deploy_args + ["--async", "--output-s3-uri", OUTPUT, "--max-concurrent-invocations", "0"],
              "argument --max-concurrent-invocations: must be an integer from 1 to 1000"),
             (["predict-endpoint", f"{GROUP}-staging-async", video, "--input-s3-uri", "example-bucket/in"],
              "input prefix (--input-s3-uri) 'example-bucket/in' is not an S3 URI"),
             (["predict-endpoint", f"{GROUP}-staging-async", tmp_path/"missing.mp4"], "missing.mp4"),
             (["predict-endpoint", f"{GROUP}-staging-async", video], "no AWS region: pass --region or set AWS_REGION")]
    for args, message in cases:
        proc = run_cli(*args, env=env, timeout=120)
        assert proc.returncode == 2 and message in proc.stderr, (args, describe(proc))
    assert clients["sagemaker"].list_endpoints()["Endpoints"] == []


def test_client_uploads_each_video_invokes_the_endpoint_and_reads_the_answer(aws, videos):
    env, clients = aws
    _deploy_async(clients)
    _moto_answers(env, (False, json.dumps(VERDICT)))
    calls = _recorded(clients["sagemaker-runtime"], "InvokeEndpointAsync")
    [result] = predict_endpoint(f"{GROUP}-staging-async", videos[:1], INPUT, sagemaker=clients["sagemaker"],
                                runtime=clients["sagemaker-runtime"], s3=clients["s3"], wait_s=30, poll_s=0.2)
    assert (result["video"], result.get("label"), result.get("probability")) == (str(videos[0]), "FAKE", 0.91), result
    [call] = calls
    key = f"async/in/{result['inference_id']}/{videos[0].name}"  # one folder per request, named by its id
    assert call == dict(EndpointName=f"{GROUP}-staging-async", InputLocation=f"s3://{BUCKET}/{key}", ContentType="video/mp4",
                        Accept="application/json", InferenceId=result["inference_id"], InvocationTimeoutSeconds=ASYNC_TIMEOUT_S)
    uploaded = clients["s3"].get_object(Bucket=BUCKET, Key=key)
    assert uploaded["ContentType"] == "video/mp4" and uploaded["Body"].read() == videos[0].read_bytes()


def test_client_waits_for_an_answer_that_appears_later(aws, videos):
    env, clients = aws
    _deploy_async(clients)
    _moto_answers(env, (False, json.dumps(VERDICT)))
    timers = _answers_held_back(clients["sagemaker-runtime"], clients["s3"], [1.5])
    start = time.monotonic()
    [result] = predict_endpoint(f"{GROUP}-staging-async", videos[:1], INPUT, sagemaker=clients["sagemaker"],
                                runtime=clients["sagemaker-runtime"], s3=clients["s3"], wait_s=30, poll_s=0.2)
    assert result.get("label") == "FAKE", result
    assert time.monotonic() - start >= 1.5 and len(timers) == 1


def test_a_failure_a_timeout_and_an_oversized_video_do_not_stop_the_others(aws, videos, tmp_path):
    env, clients = aws
    _deploy_async(clients)
    _moto_answers(env, (True, "422: no face found in the 32 sampled frames examined"), (False, "{}"), (False, json.dumps(VERDICT)))
    _answers_held_back(clients["sagemaker-runtime"], clients["s3"], [0, None, 0])
    huge = tmp_path/"huge.mp4"
    with open(huge, "wb") as f: f.truncate(ASYNC_MAX_BODY + 1)  # sparse: no disk used, refused before the upload
    failed, unanswered, too_big, judged = predict_endpoint(
        f"{GROUP}-staging-async", [videos[0], videos[1], huge, videos[2]], INPUT, sagemaker=clients["sagemaker"],
        runtime=clients["sagemaker-runtime"], s3=clients["s3"], wait_s=2, poll_s=0.2)
    assert failed["error"] == "422: no face found in the 32 sampled frames examined", failed
    assert unanswered["pending"] and unanswered["video"] == str(videos[1])
    assert unanswered["error"].startswith("no answer within 2 s: it will be at s3://"), unanswered
    assert unanswered["output_location"] in unanswered["error"]
    assert too_big["error"] == f"{ASYNC_MAX_BODY + 1} bytes, over the {ASYNC_MAX_BODY}-byte (1 GB) limit of an asynchronous endpoint"
    assert judged.get("label") == "FAKE", judged
    keys = [o["Key"] for o in clients["s3"].list_objects_v2(Bucket=BUCKET, Prefix="async/in/")["Contents"]]
    assert sorted(k.split("/")[-1] for k in keys) == sorted(v.name for v in videos)  # the oversized one never uploaded


def test_predict_endpoint_command_prints_verdicts_and_exits_1_when_one_fails(aws, videos):
    env, clients = aws
    _deploy_async(clients)
    _moto_answers(env, (False, json.dumps(VERDICT)), (True, "the video could not be decoded"))
    proc = run_cli("predict-endpoint", f"{GROUP}-staging-async", videos[0], videos[1], "--input-s3-uri", INPUT, "--json", env=env)
    assert proc.returncode == 1, describe(proc)
    first, second = json.loads(proc.stdout)
    assert (first["label"], first["video"]) == ("FAKE", str(videos[0])) and second["error"] == "the video could not be decoded"
    assert f"queued {videos[0]} as {first['inference_id']}: answer at {first['output_location']}" in proc.stderr, describe(proc)
    _moto_answers(env, (False, json.dumps(VERDICT)))
    proc = run_cli("predict-endpoint", f"{GROUP}-staging-async", videos[2], "--input-s3-uri", INPUT, env=env)
    assert proc.returncode == 0, describe(proc)
    assert "FAKE" in proc.stdout and "0.910" in proc.stdout, proc.stdout
    assert f"endpoint {GROUP}-staging-async, model 2" in proc.stdout, proc.stdout


def test_moto_still_fails_invoke_endpoint_on_a_binary_body(aws):
    "The stand-in below exists because moto 5.2's server answers InvokeEndpoint with HTTP 500 on a body that is not UTF-8 text."
    _, clients = aws
    runtime = boto3.client("sagemaker-runtime", region_name=REGION, endpoint_url=clients["s3"].meta.endpoint_url,
                           aws_access_key_id="testing", aws_secret_access_key="testing", config=Config(retries={"max_attempts": 1}))
    with pytest.raises(ClientError) as e:
        runtime.invoke_endpoint(EndpointName="any", Body=bytes(range(256)), ContentType="video/mp4")  # as any video is
    assert e.value.response["ResponseMetadata"]["HTTPStatusCode"] == 500, "moto takes binary bodies now: drop _play_invoke_endpoint"


def _play_invoke_endpoint(runtime, answer:bytes, calls:list):
    """Answer the InvokeEndpoint calls of `runtime` with `answer`, as the endpoint would, since moto 5.2 cannot take a video body.

    The request still goes through botocore (validated and serialized); what would go over the wire is recorded in `calls`."""
    def invoke_endpoint(params, **_):
        calls.append(dict(url=params["url"], body=params["body"], content_type=params["headers"]["Content-Type"]))
        body = StreamingBody(io.BytesIO(answer), len(answer))
        return AWSResponse(params["url"], 200, {}, None), {"Body": body, "ContentType": "application/json"}
    runtime.meta.events.register("before-call.sagemaker-runtime.InvokeEndpoint", invoke_endpoint)


def test_realtime_endpoint_gets_small_videos_in_the_request_and_refuses_large_ones(aws, videos, tmp_path):
    env, clients = aws
    deploy("staging", ROLE, CAPTURE, client=clients["sagemaker"])
    calls = []
    _play_invoke_endpoint(clients["sagemaker-runtime"], json.dumps(VERDICT | dict(label="REAL", probability=0.12)).encode(), calls)
    large = tmp_path/"long.mp4"
    with open(large, "wb") as f: f.truncate(REALTIME_REQUEST_MAX + 1)
    small, refused = predict_endpoint(f"{GROUP}-staging", [videos[0], large], sagemaker=clients["sagemaker"],
                                      runtime=clients["sagemaker-runtime"], s3=clients["s3"])
    assert (small.get("label"), small.get("probability")) == ("REAL", 0.12), small
    [call] = calls  # the large one was never sent
    assert call["url"].endswith(f"/endpoints/{GROUP}-staging/invocations")
    assert call["body"] == videos[0].read_bytes() and call["content_type"] == "video/mp4"
    assert "over the 6291456-byte (6 MB) request limit of a real-time endpoint: ask the asynchronous endpoint" in refused["error"]
    assert '{"s3_uri": "s3://BUCKET/KEY"}' in refused["error"]


def test_moto_still_writes_async_answers_to_a_bucket_of_its_own(aws):
    "What the tests above play, and nbs/19_deploy.ipynb describes: moto answers at once, ignores S3OutputPath, runs no model."
    env, clients = aws
    _deploy_async(clients)
    runtime = clients["sagemaker-runtime"]
    queued = runtime.invoke_endpoint_async(EndpointName=f"{GROUP}-staging-async", InputLocation="s3://nowhere/x.mp4")
    assert not queued["OutputLocation"].startswith(OUTPUT), "moto writes to S3OutputPath now: update what nbs/19_deploy says it lacks"
    bucket, key = queued["OutputLocation"].removeprefix("s3://").split("/", 1)
    assert clients["s3"].get_object(Bucket=bucket, Key=key)["Body"].read() == b'{"default": "response"}'
    queued = runtime.invoke_endpoint_async(EndpointName="no-such-endpoint", InputLocation="s3://nowhere/y.mp4")
    assert queued["OutputLocation"], "moto checks the endpoint now: update what nbs/19_deploy says it lacks"
