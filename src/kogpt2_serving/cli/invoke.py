"""`kogpt2-serving invoke`: one request to an endpoint, as a smoke test."""
from ..aws import invoke
from ..aws.calls import print_plan
from ..aws.options import add_aws_options, add_name_option, clients_from


def add_arguments(parser):
    add_name_option(parser, "endpoint name")
    parser.add_argument("prompt", help="text to continue")
    parser.add_argument("--parameters", default=None,
                        help='generation parameters as a JSON object, e.g. \'{"max_new_tokens": 32}\'')
    add_aws_options(parser)


def run(args):
    body = invoke.request_body(args.prompt, invoke.parse_parameters_option(args.parameters))
    if args.dry_run:
        print_plan([invoke.invoke_call(args.name, body)])
        return 0
    response = invoke.invoke(clients_from(args), args.name, body)
    print(response.text())
    return 0
