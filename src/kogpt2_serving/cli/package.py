"""`kogpt2-serving package`: model directory -> model.tar.gz in SageMaker's layout."""
from ..aws.packaging import package


def add_arguments(parser):
    parser.add_argument("--model-dir", required=True, help="model directory (what `generate --model-dir` loads)")
    parser.add_argument("-o", "--output", default="model.tar.gz", help="archive to write (default: %(default)s)")
    parser.add_argument("--no-validate", action="store_true",
                        help="skip loading the model before packaging (not recommended)")


def run(args):
    if not args.no_validate:
        print("validating: loading {}".format(args.model_dir), flush=True)
    result = package(args.model_dir, args.output, validate=not args.no_validate)
    for member in result.members:
        print("  " + member)
    print("wrote {} ({:.1f} MB); upload it with `kogpt2-serving deploy --model-tar {} ...`".format(
        result.path, result.size / 1e6, result.path))
    return 0
