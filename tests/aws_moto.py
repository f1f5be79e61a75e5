"""A moto server on loopback for the AWS tests: real boto3, real HTTP, fake AWS.

The server runs in its own process group (killed as a group on teardown) on a free port in
20000-32766. Each test starts from an empty AWS (POST /moto-api/reset) with the environment
boto3 reads (AWS_ENDPOINT_URL, credentials, region) pointing at it.
"""
import json
import os
import signal
import subprocess
import sys
import time
import urllib.request

import pytest

from kogpt2_serving.testing import free_port  # noqa: F401  (tests import it from here)

ACCOUNT = "123456789012"  # moto's default account
REGION = "ap-northeast-2"
ROLE = "arn:aws:iam::{}:role/kogpt2-sagemaker".format(ACCOUNT)
REPOSITORY = "kogpt2-serving"
IMAGE = "{}.dkr.ecr.{}.amazonaws.com/{}:0.1.0-cpu".format(ACCOUNT, REGION, REPOSITORY)
STARTUP_LIMIT_S = 60  # a bound on waiting for the server, not a timing assertion


class MotoServer:
    def __init__(self, log_path):
        self.port = free_port()
        self.url = "http://127.0.0.1:{}".format(self.port)
        self._log = open(log_path, "wb")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(self.port)],
            stdout=self._log, stderr=subprocess.STDOUT, start_new_session=True)
        self._wait_ready(log_path)

    def _wait_ready(self, log_path):
        deadline = time.monotonic() + STARTUP_LIMIT_S
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError("moto server exited: " + open(log_path).read()[-2000:])
            try:
                urllib.request.urlopen(self.url + "/moto-api/data.json", timeout=2).read()
                return
            except OSError:
                time.sleep(0.2)
        self.stop()
        raise RuntimeError("moto server did not answer on {} within {} s".format(self.url, STARTUP_LIMIT_S))

    def post(self, path, payload=None):
        data = json.dumps(payload or {}).encode()
        request = urllib.request.Request(self.url + path, data=data, method="POST",
                                         headers={"Content-Type": "application/json"})
        return urllib.request.urlopen(request, timeout=10).read()

    def reset(self):
        self.post("/moto-api/reset")

    def queue_endpoint_results(self, bodies, content_type="application/json"):
        """What invoke_endpoint will answer next, in order (moto's canned results)."""
        self.post("/moto-api/static/sagemaker/endpoint-results", {
            "account_id": ACCOUNT, "region": REGION,
            "results": [{"Body": b, "ContentType": content_type, "InvokedProductionVariant": "AllTraffic",
                         "CustomAttributes": ""} for b in bodies]})

    def stop(self):
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()
        self._log.close()


@pytest.fixture(scope="session")
def moto_server(tmp_path_factory):
    server = MotoServer(str(tmp_path_factory.mktemp("moto") / "moto.log"))
    yield server
    server.stop()


@pytest.fixture
def aws(moto_server, monkeypatch):
    """An empty fake AWS, and the environment that makes boto3 (and our CLI) use it."""
    moto_server.reset()
    for name in ("AWS_PROFILE", "AWS_DEFAULT_PROFILE", "AWS_SESSION_TOKEN", "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI",
                 "AWS_CONTAINER_CREDENTIALS_FULL_URI", "AWS_WEB_IDENTITY_TOKEN_FILE", "AWS_ROLE_ARN"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", os.devnull)
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")  # never look for instance metadata off the machine
    monkeypatch.setenv("AWS_ENDPOINT_URL", moto_server.url)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_REGION", REGION)
    monkeypatch.setenv("AWS_DEFAULT_REGION", REGION)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", os.devnull)
    return moto_server


def client(service):
    import boto3

    return boto3.client(service, region_name=REGION)


def push_image(repository=REPOSITORY, tag="0.1.0-cpu"):
    """An image manifest in moto's ECR, as `make ecr-push` would leave it."""
    ecr = client("ecr")
    ecr.create_repository(repositoryName=repository)
    manifest = {"schemaVersion": 2, "mediaType": "application/vnd.docker.distribution.manifest.v2+json",
                "config": {"mediaType": "application/vnd.docker.container.image.v1+json", "size": 7023,
                           "digest": "sha256:" + "a" * 64}, "layers": []}
    ecr.put_image(repositoryName=repository, imageManifest=json.dumps(manifest), imageTag=tag)
