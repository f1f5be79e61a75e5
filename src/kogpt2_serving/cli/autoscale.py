"""`kogpt2-serving autoscale`: target tracking on invocations per instance for an endpoint."""
import json

from ..aws import autoscale
from ..aws.calls import print_plan
from ..aws.options import add_aws_options, add_name_option, clients_from


def add_arguments(parser):
    add_name_option(parser, "endpoint name")
    parser.add_argument("--variant", default=autoscale.VARIANT, help="(default: %(default)s)")
    parser.add_argument("--min-instances", type=int, default=1, help="(default: %(default)s)")
    parser.add_argument("--max-instances", type=int, default=4, help="(default: %(default)s)")
    parser.add_argument("--target", type=float, default=60.0,
                        help="invocations per instance per minute to hold (default: %(default)s)")
    parser.add_argument("--scale-in-cooldown", type=int, default=300, help="seconds (default: %(default)s)")
    parser.add_argument("--scale-out-cooldown", type=int, default=60, help="seconds (default: %(default)s)")
    parser.add_argument("--show", action="store_true", help="only print the registered target and policies")
    parser.add_argument("--remove", action="store_true", help="remove the policies and deregister the target")
    add_aws_options(parser)


def run(args):
    spec = autoscale.ScalingSpec(args.name, args.min_instances, args.max_instances, args.target,
                                 args.scale_in_cooldown, args.scale_out_cooldown, args.variant)
    if args.dry_run:
        print_plan(autoscale.removal_plan(args.name, args.variant) if args.remove else _checked_plan(spec))
        return 0
    clients = clients_from(args)
    if args.show:
        targets, policies = autoscale.describe(clients, args.name, args.variant)
        print(json.dumps({"ScalableTargets": targets, "ScalingPolicies": policies}, indent=2, default=str))
    elif args.remove:
        autoscale.remove(clients, args.name, args.variant)
    else:
        autoscale.apply(clients, spec)
    return 0


def _checked_plan(spec):
    autoscale.check_spec(spec)
    return autoscale.plan(spec)
