"""`kogpt2-serving teardown`: delete the endpoint, its config, model and autoscaling."""
from ..aws import teardown
from ..aws.calls import print_plan
from ..aws.options import add_aws_options, add_name_option, clients_from


def add_arguments(parser):
    add_name_option(parser, "endpoint name (deploy's --name)")
    parser.add_argument("--delete-model-data", action="store_true", help="also delete model.tar.gz from S3")
    parser.add_argument("--delete-image", action="store_true",
                        help="also delete the model's image from ECR (images of this account only)")
    add_aws_options(parser)


def run(args):
    if args.dry_run:
        print_plan(teardown.dry_run_plan(args.name, args.delete_model_data, args.delete_image))
        return 0
    teardown.teardown(clients_from(args), args.name, args.delete_model_data, args.delete_image)
    return 0
