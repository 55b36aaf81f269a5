"A moto server on loopback standing in for the AWS APIs, and the environment that points boto3 at it."
from __future__ import annotations
import os, socket, subprocess, sys, time, urllib.request
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
