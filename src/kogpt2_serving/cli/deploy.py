"""`kogpt2-serving deploy`: upload model.tar.gz, create model, endpoint config and endpoint, wait.

The SageMaker SDK equivalent is in docs/deployment.md.
"""
from ..aws import deploy, s3, validate
from ..aws.calls import Call, print_plan
from ..aws.errors import DeploymentError
from ..aws.options import add_aws_options, add_name_option, clients_from, dry_run_region
from ..aws.packaging import check_archive


def add_arguments(parser):
    add_name_option(parser)
    parser.add_argument("--image", required=True, help="ECR image URI (make image-cpu ecr-push prints it)")
    parser.add_argument("--role", default=None, help="IAM role ARN SageMaker assumes to read S3 and pull the image")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--model-tar", help="local model.tar.gz (from `kogpt2-serving package`) to upload")
    source.add_argument("--model-data", help="s3:// URI of an already uploaded model.tar.gz")
    parser.add_argument("--bucket", help="S3 bucket for --model-tar")
    parser.add_argument("--prefix", default="kogpt2-serving", help="S3 key prefix for --model-tar (default: %(default)s)")
    parser.add_argument("--instance-type", default="ml.c5.xlarge", help="(default: %(default)s)")
    parser.add_argument("--instance-count", type=int, default=1, help="(default: %(default)s)")
    parser.add_argument("--workers", type=int, default=None,
                        help="MMS workers per instance (default: the server's own: 32 light workers in front of "
                             "the engine process)")
    parser.add_argument("--env", action="append", default=[], metavar="KEY=VALUE",
                        help="extra container environment, repeatable (e.g. KOGPT2_DEVICE=gpu)")
    parser.add_argument("--model-only", action="store_true", help="create the model only (for batch-transform)")
    parser.add_argument("--no-wait", action="store_true", help="return once the endpoint is being created")
    parser.add_argument("--wait-timeout", type=int, default=3600, help="seconds to wait for InService")
    parser.add_argument("--poll", type=int, default=30, help="seconds between status checks")
    add_aws_options(parser)


def run(args):
    if args.model_tar:
        check_archive(args.model_tar)
        if not args.bucket:
            raise DeploymentError("--model-tar needs --bucket (the S3 bucket to upload it to)")
        key = s3.default_key(args.prefix, args.name)
        model_data = s3.model_data_uri(args.bucket, key)
    else:
        model_data = args.model_data
    spec = deploy.DeploySpec(args.name, args.image, model_data, args.role, args.instance_type, args.instance_count,
                             args.workers, parse_env(args.env))
    if args.dry_run:
        return _dry_run(args, spec)
    deploy.deploy(clients_from(args), spec, model_tar=args.model_tar, model_only=args.model_only,
                  wait=not args.no_wait, poll_seconds=args.poll, timeout_seconds=args.wait_timeout)
    return 0


def _dry_run(args, spec):
    region = dry_run_region(args)
    image = validate.ECR_IMAGE.match(spec.image or "")
    if region == "<region>" and image:
        region = image.group("region")  # no region configured: show the image's
    deploy.check_spec(spec, region)
    calls = []
    if args.model_tar:
        bucket, key = validate.s3_uri(spec.model_data, "--bucket")
        calls += [Call("s3", "head_bucket", {"Bucket": bucket}), s3.upload_call(args.model_tar, bucket, key)]
    calls += deploy.plan(spec, region, args.model_only)
    if not args.model_only and not args.no_wait:
        calls.append(deploy.describe_endpoint_call(spec.name))
    print_plan(calls)
    return 0


def parse_env(pairs):
    env = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise DeploymentError("--env takes KEY=VALUE, got {!r}".format(pair))
        env[key] = value
    return env
