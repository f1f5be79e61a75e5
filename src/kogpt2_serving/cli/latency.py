"""`kogpt2-serving latency`: time N requests against an endpoint or a local URL."""
from ..aws.errors import DeploymentError
from ..aws.invoke import parse_parameters_option, request_body
from ..aws.latency import endpoint_sender, format_report, measure, url_sender
from ..aws.options import add_aws_options, clients_from

DEFAULT_PROMPT = "아기 공룡 둘리는 희동이와"


def add_arguments(parser):
    target = parser.add_mutually_exclusive_group(required=True)
    target.add_argument("--endpoint", help="SageMaker endpoint name")
    target.add_argument("--url", help="server URL, e.g. http://127.0.0.1:8080 (/invocations is added)")
    parser.add_argument("--calls", type=int, default=20, help="requests, the first one untimed (default: %(default)s)")
    parser.add_argument("--prompt", default=DEFAULT_PROMPT, help="(default: %(default)s)")
    parser.add_argument("--parameters", default=None, help="generation parameters as a JSON object")
    parser.add_argument("--timeout", type=float, default=70.0, help="seconds per request with --url")
    add_aws_options(parser, dry_run=False)


def run(args):
    if args.calls < 2:
        raise DeploymentError("--calls must be >= 2 (the first call is a warm-up), got {}".format(args.calls))
    body = request_body(args.prompt, parse_parameters_option(args.parameters))
    send = url_sender(args.url, args.timeout) if args.url else endpoint_sender(clients_from(args), args.endpoint)
    report = measure(send, body, args.calls, progress=_progress)
    print()
    for line in format_report(report, args.prompt):
        print(line)
    return 1 if report.errors and not report.samples else 0


def _progress(number, total):
    print("\r{}/{}".format(number, total), end="", flush=True)
