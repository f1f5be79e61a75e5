"""An AWS API call as data, printed before it is sent, and AWS errors turned into advice.

`Call("sagemaker", "create_model", {...})` is what `--dry-run` prints and what the real run
sends through the boto3 client of that service (`getattr(client, operation)(**params)`, so
boto3 helpers such as `s3.upload_file` work too).
"""
import json
from typing import NamedTuple

from .errors import AwsCallError

# Error codes meaning "that resource is not there"; teardown treats them as already done.
NOT_FOUND_CODES = ("ObjectNotFoundException", "RepositoryNotFoundException", "ImageNotFoundException",
                   "NoSuchKey", "NoSuchBucket", "404", "ResourceNotFound")
NOT_FOUND_PHRASES = ("could not find", "not found", "does not exist")


class Call(NamedTuple):
    service: str  # boto3 service name
    operation: str  # boto3 method name
    params: dict

    def render(self):
        """Multi-line, JSON-formatted, as the dry run prints it."""
        body = json.dumps(self.params, indent=2, sort_keys=True, ensure_ascii=False, default=_printable)
        return "{}.{}({})".format(self.service, self.operation, body)

    def summary(self):
        """One line for progress output: the operation and the names it acts on."""
        names = [str(v) for k, v in sorted(self.params.items()) if k.endswith(("Name", "Id", "Key", "Filename", "Bucket"))]
        return "{}.{}({})".format(self.service, self.operation, ", ".join(names))


def _printable(value):
    if isinstance(value, (bytes, bytearray)):
        return bytes(value).decode("utf-8", errors="replace")
    return str(value)


def out(line=""):
    print(line, flush=True)


def print_plan(calls, write=out):
    for call in calls:
        write(call.render())
    write("dry run: {} call(s) listed, nothing was sent".format(len(calls)))


def send(clients, call, write=out, quiet=False):
    """Send one call; AWS and connection failures become AwsCallError with the AWS message."""
    if not quiet:
        write("-> " + call.summary())
    client = clients.get(call.service)
    try:
        return getattr(client, call.operation)(**call.params)
    except Exception as e:  # botocore's classes are only importable when boto3 is installed
        translated = translate(call, e)
        if translated is None:
            raise
        raise translated from e


def send_all(clients, calls, write=out):
    return [send(clients, call, write) for call in calls]


def send_if_present(clients, call, write=out):
    """Send a delete; a resource that is already gone is reported and skipped, not an error."""
    try:
        return send(clients, call, write)
    except AwsCallError as e:
        if not is_not_found(e):
            raise
        write("   already gone: " + e.message)
        return None


def is_not_found(error):
    return error.code in NOT_FOUND_CODES or any(p in error.message.lower() for p in NOT_FOUND_PHRASES)


def error_code(exc):
    response = getattr(exc, "response", None) or {}
    return response.get("Error", {}).get("Code")


def translate(call, exc):
    """The AWS message, the failing call, and a hint on what to change when we know one.
    Returns None for exceptions that are not about AWS (programming errors propagate)."""
    if hasattr(exc, "response"):  # botocore ClientError and its service-specific subclasses
        code = error_code(exc)
        message = (exc.response.get("Error", {}).get("Message") or str(exc)).strip()
        hint = _hint(call, code or "", message)
        text = "{} failed ({}): {}".format(call.summary(), code, message)
        return AwsCallError(text + ("\n  fix: " + hint if hint else ""), code)
    name = type(exc).__name__
    if name in ("NoCredentialsError", "PartialCredentialsError"):
        return AwsCallError("no AWS credentials found for {}: configure them with `aws configure`, "
                            "AWS_PROFILE or --profile".format(call.summary()), name)
    if type(exc).__module__.split(".")[0] in ("botocore", "boto3", "s3transfer") or isinstance(exc, OSError):
        return AwsCallError("{} failed: {}".format(call.summary(), exc), name)
    return None


def _hint(call, code, message):
    lowered = message.lower()
    if "already exist" in lowered or code == "ResourceInUse":
        return ("a resource with this name already exists: remove it with "
                "`kogpt2-serving teardown --name NAME` or choose another --name")
    if code in ("AccessDenied", "AccessDeniedException", "UnauthorizedOperation"):
        return "the credentials in use may not call {}:{}; grant it in IAM".format(call.service, call.operation)
    if "role" in lowered and call.operation == "create_model":
        return ("--role must name a role that SageMaker can assume (trust policy for sagemaker.amazonaws.com) "
                "and that can read the model data in S3 and pull the image from ECR")
    if code == "NoSuchBucket":
        return "create the bucket (`aws s3 mb s3://BUCKET`) or pass another --bucket"
    return ""
