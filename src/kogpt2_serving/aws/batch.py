"""Offline generation with a SageMaker Batch Transform job over JSON Lines files in S3.

Each input line is one request (`SplitType=Line`); with the SingleRecord strategy each line is
sent on its own, with MultiRecord as many lines as fit in --max-payload-mb go in one
application/jsonlines request. Results land as `<input file>.out` under the output prefix,
one JSON line per input line, in order (`AssembleWith=Line`).
"""
import time
from typing import NamedTuple

from . import validate
from .calls import Call, out, send
from .errors import DeploymentError
from .waiter import wait_for_status

JSONLINES = "application/jsonlines"
STRATEGIES = ("SingleRecord", "MultiRecord")
JOB_FAILED_HINT = ("read the job's log in CloudWatch (log group /aws/sagemaker/TransformJobs); a line the model "
                   "rejects fails the job: check the input is one JSON request per line")


class TransformSpec(NamedTuple):
    job_name: str
    model_name: str
    input_uri: str  # s3:// prefix or object of .jsonl files
    output_uri: str  # s3:// prefix for the .out files
    instance_type: str = "ml.c5.xlarge"
    instance_count: int = 1
    strategy: str = "SingleRecord"
    max_payload_mb: int = 6
    max_concurrent: int = 0  # 0: SageMaker's choice (one per worker)


def default_job_name(model_name, now=None):
    """SageMaker job names are unique forever per account and region: add a timestamp."""
    stamp = time.strftime("%Y%m%d-%H%M%S", time.gmtime(now))
    return "{}-{}".format(model_name[:63 - len(stamp) - 1], stamp)


def check_spec(spec):
    validate.name(spec.job_name, "--job-name")
    validate.name(spec.model_name, "--model-name")
    validate.s3_uri(spec.input_uri, "--input")
    validate.s3_uri(spec.output_uri, "--output")
    validate.instance_type(spec.instance_type)
    validate.at_least(spec.instance_count, 1, "--instance-count")
    validate.at_least(spec.max_payload_mb, 1, "--max-payload-mb")
    if spec.strategy not in STRATEGIES:
        raise DeploymentError("--strategy must be one of {}, got {!r}".format(", ".join(STRATEGIES), spec.strategy))


def transform_call(spec):
    params = {
        "TransformJobName": spec.job_name,
        "ModelName": spec.model_name,
        "BatchStrategy": spec.strategy,
        "MaxPayloadInMB": spec.max_payload_mb,
        "TransformInput": {
            "DataSource": {"S3DataSource": {"S3DataType": "S3Prefix", "S3Uri": spec.input_uri}},
            "ContentType": JSONLINES,
            "SplitType": "Line",
            "CompressionType": "None",
        },
        "TransformOutput": {"S3OutputPath": spec.output_uri, "Accept": JSONLINES, "AssembleWith": "Line"},
        "TransformResources": {"InstanceType": spec.instance_type, "InstanceCount": spec.instance_count},
    }
    if spec.max_concurrent:
        params["MaxConcurrentTransforms"] = spec.max_concurrent
    return Call("sagemaker", "create_transform_job", params)


def describe_call(job_name):
    return Call("sagemaker", "describe_transform_job", {"TransformJobName": job_name})


def run(clients, spec, wait=True, poll_seconds=30, timeout_seconds=86400, write=out, sleep=None):
    """Check the model exists, start the job, wait, and say where the results are."""
    check_spec(spec)
    _check_model(clients, spec.model_name, write)
    send(clients, transform_call(spec), write)
    if not wait:
        write("job {} started; results will be under {}".format(spec.job_name, spec.output_uri))
        return send(clients, describe_call(spec.job_name), write, quiet=True)
    kwargs = {"sleep": sleep} if sleep else {}
    description = wait_for_status(clients, describe_call(spec.job_name), "TransformJobStatus", done=("Completed",),
                                  failed=("Failed", "Stopped"), label="transform job " + spec.job_name,
                                  failure_hint=JOB_FAILED_HINT, poll_seconds=poll_seconds,
                                  timeout_seconds=timeout_seconds, write=write, **kwargs)
    write("results: {}/<input file name>.out (one JSON line per input line)".format(
        description["TransformOutput"]["S3OutputPath"].rstrip("/")))
    return description


def _check_model(clients, model_name, write):
    try:
        send(clients, Call("sagemaker", "describe_model", {"ModelName": model_name}), write)
    except DeploymentError as e:
        if "not find" in e.message.lower() or "not found" in e.message.lower():
            raise DeploymentError("model {} not found: create it with `kogpt2-serving deploy --model-only "
                                  "--name {} ...` (or a full deploy), or pass --model-name".format(model_name, model_name))
        raise
