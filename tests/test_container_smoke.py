"""The image's `serve`, run outside Docker: the Dockerfile's ENTRYPOINT + CMD with the
environment deploy gives the container and SageMaker's /opt/ml layout (under
SAGEMAKER_BASE_DIR), made by unpacking the model.tar.gz that `package` writes. Then /ping and
/invocations over loopback.

Differences from the container, on purpose: the package and the entrypoint's `kogpt2-serving`
come from this checkout's venv instead of the wheel, and `--host 127.0.0.1` follows `serve`
(inside SageMaker the server listens on all interfaces; a test listens on loopback only).
"""
import json
import os
import sys
import tarfile

import pytest
from aws_dockerfile import environment, exec_form, repository_path
from server_utils import ServeProcess, free_port

from kogpt2_serving.aws.deploy import DeploySpec, container_environment
from kogpt2_serving.aws.packaging import package

PROMPT = "아기 공룡 둘리는"


@pytest.fixture(scope="module", params=["cpu", "gpu"])
def device(request):
    return request.param


def image_command(device):
    """What `docker run IMAGE` execs: ENTRYPOINT (mapped to the file COPY put there) + CMD."""
    entrypoint = exec_form(device, "ENTRYPOINT")
    command = [repository_path(device, entrypoint[0])] + entrypoint[1:] + exec_form(device, "CMD")
    return command + ["--host", "127.0.0.1"]


@pytest.fixture(scope="module")
def sagemaker_base(tiny_model_dir, tmp_path_factory):
    """/opt/ml with model.tar.gz unpacked into model/, as SageMaker prepares it."""
    base = tmp_path_factory.mktemp("opt-ml")
    archive = package(tiny_model_dir, str(base / "model.tar.gz"), validate=False)
    with tarfile.open(archive.path, "r:gz") as tar:
        tar.extractall(str(base / "model"))
    os.remove(archive.path)
    return str(base)


@pytest.fixture(scope="module")
def container(sagemaker_base):
    """Only the CPU image is started: the GPU image differs by its base alone (see
    test_dockerfiles), and this machine has no GPU."""
    port = free_port()
    spec = DeploySpec("kogpt2-serving", "unused", "s3://unused/model.tar.gz", "unused", workers=1)
    env = dict(environment("cpu"), **container_environment(spec, "ap-northeast-2"))
    env.update({
        "SAGEMAKER_BASE_DIR": sagemaker_base,
        "SAGEMAKER_BIND_TO_PORT": str(port),
        "PATH": os.path.dirname(sys.executable) + os.pathsep + os.environ["PATH"],
    })
    with ServeProcess(None, env=env, port=port, command=image_command("cpu")) as running:
        yield running


def test_entrypoint_and_cmd_are_the_same_for_both_images(device):
    assert image_command(device)[1:] == ["serve", "--host", "127.0.0.1"]
    assert os.path.basename(image_command(device)[0]) == "entrypoint.sh"


def test_serves_the_unpacked_model_on_the_bind_to_port(container, sagemaker_base):
    log = container.log_text()
    assert "serving {} at http://127.0.0.1:{} ".format(os.path.join(sagemaker_base, "model"), container.port) in log
    assert "model ready (handler functions from inference)" in log  # code/inference.py from the archive
    status, _, _, _ = container.request("GET", "/ping")
    assert status == 200


def test_sdk_style_request_gets_the_walkthrough_list(container):
    status, _, headers, body = container.post(json.dumps(PROMPT, ensure_ascii=False), "application/json",
                                              "application/json")
    assert status == 200, container.log_text()
    assert headers["content-type"].startswith("application/json")
    text, tokens, seconds = json.loads(body.decode("utf-8"))
    assert text.startswith(PROMPT)
    assert isinstance(tokens, int) and tokens > 0
    assert isinstance(seconds, float) and seconds >= 0


def test_parameters_and_errors(container):
    status, answer = container.post_json({"inputs": PROMPT, "parameters": {"max_new_tokens": 3}})
    assert status == 200, container.log_text()
    assert len(answer) == 1 and answer[0]["generated_text"].startswith(PROMPT)
    status, error = container.post_json({"inputs": PROMPT, "parameters": {"top_p": 1.5, "do_sample": True}})
    assert status == 400
    assert "top_p" in json.dumps(error)
