"""Create model -> endpoint config -> endpoint, then wait until the endpoint is InService.

All three resources share one name (SageMaker names are per resource type), so teardown
and batch transform find them from the endpoint name alone. The container environment is
what the SageMaker SDK's MXNetModel would set, so both routes behave the same.
"""
from typing import NamedTuple, Optional

from ..settings import PROGRAM_ENV, WORKERS_ENV
from . import ecr, s3, validate
from .calls import Call, is_not_found, out, send, send_all
from .errors import AwsCallError, DeploymentError
from .waiter import wait_for_status

VARIANT = "AllTraffic"
ENDPOINT_FAILED_HINT = (
    "read the container log in CloudWatch (log group /aws/sagemaker/Endpoints/{name}); common causes: a GPU image "
    "on a CPU instance type (or the reverse), a model.tar.gz not made by `kogpt2-serving package`, an instance "
    "type with too little memory for the model (and with KOGPT2_ENGINE=off, for --workers copies of it)")


class DeploySpec(NamedTuple):
    name: str
    image: str
    model_data: str  # s3://bucket/key of model.tar.gz
    role: str
    instance_type: str = "ml.c5.xlarge"
    instance_count: int = 1
    workers: Optional[int] = None  # None: the container's default (32 light workers in front of the engine)
    environment: dict = {}  # extra SAGEMAKER_*/KOGPT2_* variables, override the defaults


def check_spec(spec, region):
    """Everything that can be checked without AWS; raises DeploymentError with the fix."""
    validate.name(spec.name)
    validate.role_arn(spec.role)
    validate.ecr_image(spec.image, region)
    validate.s3_uri(spec.model_data, "--model-data")
    validate.instance_type(spec.instance_type)
    validate.at_least(spec.instance_count, 1, "--instance-count")
    if spec.workers is not None:
        validate.at_least(spec.workers, 1, "--workers")


def container_environment(spec, region):
    env = {
        PROGRAM_ENV: "inference.py",
        "SAGEMAKER_SUBMIT_DIRECTORY": "/opt/ml/model/code",
        "SAGEMAKER_CONTAINER_LOG_LEVEL": "20",
        "SAGEMAKER_REGION": region,
    }
    if spec.workers is not None:
        env[WORKERS_ENV] = str(spec.workers)
    env.update(spec.environment)
    return env


def model_call(spec, region):
    return Call("sagemaker", "create_model", {
        "ModelName": spec.name,
        "ExecutionRoleArn": spec.role,
        "PrimaryContainer": {"Image": spec.image, "ModelDataUrl": spec.model_data,
                             "Environment": container_environment(spec, region)},
    })


def endpoint_calls(spec):
    variant = {"VariantName": VARIANT, "ModelName": spec.name, "InstanceType": spec.instance_type,
               "InitialInstanceCount": spec.instance_count, "InitialVariantWeight": 1.0}
    return [
        Call("sagemaker", "create_endpoint_config", {"EndpointConfigName": spec.name, "ProductionVariants": [variant]}),
        Call("sagemaker", "create_endpoint", {"EndpointName": spec.name, "EndpointConfigName": spec.name}),
    ]


def describe_endpoint_call(name):
    return Call("sagemaker", "describe_endpoint", {"EndpointName": name})


def plan(spec, region, model_only=False):
    """The create calls in order (after any upload), for --dry-run and for the real run."""
    return [model_call(spec, region)] + ([] if model_only else endpoint_calls(spec))


def deploy(clients, spec, model_tar=None, model_only=False, wait=True, poll_seconds=30, timeout_seconds=3600,
           write=out):
    """Check everything, upload `model_tar` (if given) to spec.model_data, create, and (unless
    told not to) wait for InService. Returns the last description. The checks come first so
    that a wrong image or name fails before a large upload."""
    region = clients.region
    check_spec(spec, region)
    ecr.check_image(clients, validate.ecr_image(spec.image, region), write)
    check_names_free(clients, spec.name, model_only, write)
    if model_tar:
        s3.upload(clients, model_tar, *validate.s3_uri(spec.model_data, "--model-data"), write=write)
    send_all(clients, plan(spec, region, model_only), write)
    if model_only:
        write("model {} created (no endpoint)".format(spec.name))
        return None
    if not wait:
        write("endpoint {} is being created; follow it with `aws sagemaker describe-endpoint --endpoint-name {}`"
              .format(spec.name, spec.name))
        return send(clients, describe_endpoint_call(spec.name), write, quiet=True)
    description = wait_for_endpoint(clients, spec.name, poll_seconds, timeout_seconds, write)
    write("endpoint {} is InService: {}".format(spec.name, description["EndpointArn"]))
    return description


def check_names_free(clients, name, model_only=False, write=out):
    """Fail before creating anything when a resource of that name is left over; otherwise a
    half-made deployment (model created, endpoint refused) would need cleaning up."""
    checks = [("model", Call("sagemaker", "describe_model", {"ModelName": name}))]
    if not model_only:
        checks += [("endpoint config", Call("sagemaker", "describe_endpoint_config", {"EndpointConfigName": name})),
                   ("endpoint", describe_endpoint_call(name))]
    for kind, call in checks:
        try:
            send(clients, call, write, quiet=True)
        except AwsCallError as e:
            if is_not_found(e):
                continue
            raise
        raise DeploymentError("a SageMaker {} named {} already exists: remove the old deployment with "
                              "`kogpt2-serving teardown --name {}`, or choose another --name".format(kind, name, name))


def wait_for_endpoint(clients, name, poll_seconds=30, timeout_seconds=3600, write=out, sleep=None):
    kwargs = {"sleep": sleep} if sleep else {}
    return wait_for_status(clients, describe_endpoint_call(name), "EndpointStatus", done=("InService",),
                           failed=("Failed", "OutOfService", "Deleting"), label="endpoint " + name,
                           failure_hint=ENDPOINT_FAILED_HINT.format(name=name), poll_seconds=poll_seconds,
                           timeout_seconds=timeout_seconds, write=write, **kwargs)

