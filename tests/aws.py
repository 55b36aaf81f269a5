"A moto server on loopback standing in for the AWS APIs, and the environment that points boto3 at it."
from __future__ import annotations
import os, socket, subprocess, sys, threading, time, urllib.error, urllib.request
from contextlib import contextmanager
from pathlib import Path

REGION = "eu-west-1"
ACCOUNT = "123456789012"  # moto's fixed account
ROLE = f"arn:aws:iam::{ACCOUNT}:role/deepfake-pipeline-test"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0)); return s.getsockname()[1]


def offline_env(**extra) -> dict:
    "This process's environment with no AWS credentials or config, and a dead proxy so any stray HTTP call fails."
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    env.update(AWS_CONFIG_FILE="/nonexistent", AWS_SHARED_CREDENTIALS_FILE="/nonexistent", AWS_EC2_METADATA_DISABLED="true",
               HTTP_PROXY="http://127.0.0.1:9", HTTPS_PROXY="http://127.0.0.1:9", NO_PROXY="")
    env.update(extra)
    return env


@contextmanager
def moto_server():
    "Start `moto_server` on 127.0.0.1 (a free port); yields the environment for boto3 to use it."
    port = free_port()
    exe = Path(sys.executable).parent/"moto_server"
    proc = subprocess.Popen([str(exe), "-H", "127.0.0.1", "-p", str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(100):
            try: urllib.request.urlopen(url + "/moto-api/", timeout=1); break
            except OSError: time.sleep(0.1)
        else: raise RuntimeError(f"moto_server did not answer on {url}")
        env = offline_env(AWS_ENDPOINT_URL=url, AWS_ACCESS_KEY_ID="testing", AWS_SECRET_ACCESS_KEY="testing",
                          AWS_DEFAULT_REGION=REGION, AWS_REGION=REGION, NO_PROXY="127.0.0.1,localhost")
        yield env
    finally:
        proc.terminate(); proc.wait(10)


@contextmanager
def environ(env:dict):
    "Temporarily replace os.environ (boto3 in this process reads it)."
    saved = dict(os.environ)
    os.environ.clear(); os.environ.update(env)
    try: yield
    finally: os.environ.clear(); os.environ.update(saved)


def run_buildspec(spec_path:Path, env:dict, cwd:Path) -> tuple[bool, list[str]]:
    "Run a buildspec's phases as CodeBuild does: its variables under the given ones, stop at a failed install or build, always run post_build."
    import yaml
    spec = yaml.safe_load(Path(spec_path).read_text())
    env = {**env, **{k: str(v) for k, v in spec.get("env", {}).get("variables", {}).items() if k not in env}}
    ok, log = True, []
    for phase in ("install", "pre_build", "build", "post_build"):
        if not ok and phase != "post_build": continue
        for cmd in spec["phases"].get(phase, {}).get("commands", []):
            p = subprocess.run(["bash", "-c", cmd], cwd=cwd, env=env, capture_output=True, text=True, timeout=900)
            log.append(f"[{phase}] $ {cmd}\n{p.stdout[-3000:]}{p.stderr[-3000:]}")
            if p.returncode != 0: ok = False; break
    return ok, log


class SageMakerHosting:
    """InvokeEndpoint for the endpoints a moto server holds, answered by the real model: on an endpoint's first request,
    the model its configuration names (package -> model.tar.gz in moto's S3, and the model's container environment) is
    started with `deepfake-mlops serve`, as SageMaker starts a container. A container's 4xx or 5xx comes back as
    InvokeEndpoint's ModelError (HTTP 424) with the original status and body, as SageMaker answers it.
    moto itself answers InvokeEndpoint with a fixed body whatever the endpoint holds."""

    def __init__(self, moto_env:dict, workdir:Path):
        import boto3
        self.env, self.workdir, self.called, self.containers = moto_env, Path(workdir), [], {}
        with environ(moto_env): self.sm, self.s3 = boto3.client("sagemaker", region_name=REGION), boto3.client("s3", region_name=REGION)
        self.lock = threading.Lock()

    def _container(self, endpoint:str) -> str:
        "The URL of the container serving `endpoint`'s model, started on first use."
        config = self.sm.describe_endpoint_config(EndpointConfigName=self.sm.describe_endpoint(EndpointName=endpoint)["EndpointConfigName"])
        model = self.sm.describe_model(ModelName=config["ProductionVariants"][0]["ModelName"])
        with self.lock:
            if model["ModelName"] in self.containers: return self.containers[model["ModelName"]][0]
            container = model["PrimaryContainer"]
            package = self.sm.describe_model_package(ModelPackageName=container["ModelPackageName"])
            bucket, _, key = package["InferenceSpecification"]["Containers"][0]["ModelDataUrl"][5:].partition("/")
            tar = self.workdir/model["ModelName"]/"model.tar.gz"; tar.parent.mkdir(parents=True)
            self.s3.download_file(bucket, key, str(tar))
            port = free_port()
            proc = subprocess.Popen([str(Path(sys.executable).parent/"deepfake-mlops"), "serve", str(tar), "--port", str(port)],
                                    env={**self.env, **container.get("Environment", {})}, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            url = f"http://127.0.0.1:{port}"
            for _ in range(600):
                try: urllib.request.urlopen(url + "/ping", timeout=2); break
                except OSError:
                    if proc.poll() is not None: raise RuntimeError(f"the container of {endpoint} exited with {proc.returncode}")
                    time.sleep(0.2)
            self.containers[model["ModelName"]] = (url, proc, container.get("Environment", {}))
            return url

    def _invoke(self, endpoint:str, body:bytes, headers:dict) -> tuple[int, dict, bytes]:
        import json
        from botocore.exceptions import ClientError
        try: url = self._container(endpoint)
        except ClientError as e:
            return 400, {"x-amzn-ErrorType": "ValidationError"}, json.dumps({"message": e.response["Error"]["Message"]}).encode()
        req = urllib.request.Request(f"{url}/invocations", data=body, headers={k: v for k, v in headers.items() if k in ("Content-Type", "Accept")})
        try:
            with urllib.request.urlopen(req, timeout=600) as r: return 200, {"Content-Type": r.headers.get("Content-Type", "")}, r.read()
        except urllib.error.HTTPError as e:
            text = e.read().decode("utf-8", "replace")
            error = {"message": f"Received client error ({e.code}) from primary with message \"{text}\".",
                     "OriginalStatusCode": e.code, "OriginalMessage": text}
            return 424, {"x-amzn-ErrorType": "ModelError", "Content-Type": "application/json"}, json.dumps(error).encode()

    def __enter__(self):
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
        hosting = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args): pass
            def do_POST(self):
                parts = self.path.split("/")  # /endpoints/NAME/invocations
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                if len(parts) != 4 or parts[1] != "endpoints" or parts[3] != "invocations":
                    status, headers, out = 404, {}, b"{}"
                else:
                    hosting.called.append(parts[2])
                    status, headers, out = hosting._invoke(parts[2], body, dict(self.headers))
                self.send_response(status)
                for k, v in headers.items(): self.send_header(k, v)
                self.send_header("Content-Length", str(len(out))); self.end_headers(); self.wfile.write(out)

        self.server = ThreadingHTTPServer(("127.0.0.1", free_port()), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        return self

    def __exit__(self, *exc):
        self.server.shutdown(); self.server.server_close()
        for _, proc, _ in self.containers.values():
            proc.terminate()
            try: proc.wait(10)
            except subprocess.TimeoutExpired: proc.kill()
