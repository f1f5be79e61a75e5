"""Options every AWS command shares (--region, --profile, --dry-run) and the clients they make."""
import os

from .session import Clients

DEFAULT_NAME = "kogpt2-serving"


def add_aws_options(parser, dry_run=True):
    parser.add_argument("--region", default=None,
                        help="AWS region (default: AWS_REGION / AWS_DEFAULT_REGION / the profile's region)")
    parser.add_argument("--profile", default=None, help="AWS profile from ~/.aws/config")
    if dry_run:
        parser.add_argument("--dry-run", action="store_true", help="print the API calls instead of sending them")


def add_name_option(parser, help_text="name of the SageMaker model, endpoint config and endpoint"):
    parser.add_argument("--name", default=DEFAULT_NAME, help="{} (default: %(default)s)".format(help_text))


def clients_from(args):
    return Clients(region=args.region, profile=args.profile)


def dry_run_region(args):
    """The region to show in a dry run, without asking AWS (and without credentials)."""
    return args.region or os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION") or "<region>"
