"""`kogpt2-serving batch-transform`: generate for every line of JSON Lines files in S3."""
from ..aws import batch
from ..aws.calls import print_plan
from ..aws.options import DEFAULT_NAME, add_aws_options, clients_from


def add_arguments(parser):
    parser.add_argument("--input", required=True, help="s3:// prefix (or object) of .jsonl files, one request a line")
    parser.add_argument("--output", required=True, help="s3:// prefix for the results (<input file>.out)")
    parser.add_argument("--model-name", default=DEFAULT_NAME,
                        help="SageMaker model to run, as made by deploy (default: %(default)s)")
    parser.add_argument("--job-name", default=None, help="(default: MODEL-NAME-YYYYmmdd-HHMMSS)")
    parser.add_argument("--instance-type", default="ml.c5.xlarge", help="(default: %(default)s)")
    parser.add_argument("--instance-count", type=int, default=1, help="(default: %(default)s)")
    parser.add_argument("--strategy", default="SingleRecord", choices=batch.STRATEGIES,
                        help="one line per request, or as many as fit in --max-payload-mb (default: %(default)s)")
    parser.add_argument("--max-payload-mb", type=int, default=6, help="(default: %(default)s)")
    parser.add_argument("--max-concurrent", type=int, default=0,
                        help="requests in flight per instance (default: SageMaker's choice)")
    parser.add_argument("--no-wait", action="store_true", help="return once the job has started")
    parser.add_argument("--wait-timeout", type=int, default=86400, help="seconds to wait (default: %(default)s)")
    parser.add_argument("--poll", type=int, default=30, help="seconds between status checks")
    add_aws_options(parser)


def run(args):
    spec = batch.TransformSpec(args.job_name or batch.default_job_name(args.model_name), args.model_name,
                               args.input, args.output, args.instance_type, args.instance_count, args.strategy,
                               args.max_payload_mb, args.max_concurrent)
    if args.dry_run:
        batch.check_spec(spec)
        print_plan([batch.transform_call(spec)])
        return 0
    batch.run(clients_from(args), spec, wait=not args.no_wait, poll_seconds=args.poll,
              timeout_seconds=args.wait_timeout)
    return 0
