"""`kogpt2-serving` command line.

Each subcommand lives in its own module and exposes `add_arguments(parser)` and `run(args)`;
this file only lists them, so adding a command is one line in COMMANDS. Modules are imported
when their command runs, so `--help` stays fast and thread settings can be applied before
MXNet loads.
"""
import argparse
import importlib
import logging
import sys

from .. import __version__
from ..errors import ServingError

# name -> (module, one-line help)
COMMANDS = {
    "generate": ("kogpt2_serving.cli.generate", "generate text from a prompt"),
    "serve": ("kogpt2_serving.cli.serve", "run a local Multi Model Server with the SageMaker handler"),
    "convert": ("kogpt2_serving.cli.convert", "write a model directory (e.g. KoGPT2 v2) in the v1 layout"),
    "package": ("kogpt2_serving.cli.package", "write model.tar.gz in SageMaker's layout"),
    "deploy": ("kogpt2_serving.cli.deploy", "create a SageMaker model, endpoint config and endpoint"),
    "autoscale": ("kogpt2_serving.cli.autoscale", "target-tracking autoscaling for an endpoint"),
    "invoke": ("kogpt2_serving.cli.invoke", "send one request to an endpoint"),
    "teardown": ("kogpt2_serving.cli.teardown", "delete an endpoint and what deploy created"),
    "batch-transform": ("kogpt2_serving.cli.batch_transform", "generate for JSON Lines files in S3"),
    "latency": ("kogpt2_serving.cli.latency", "time requests against an endpoint or URL"),
}


def main(argv=None):
    parser = argparse.ArgumentParser(prog="kogpt2-serving", description="Serve KoGPT2 on SageMaker and locally.")
    parser.add_argument("--version", action="version", version="%(prog)s " + __version__)
    parser.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (module, help_text) in COMMANDS.items():
        # No -h here: `COMMAND --help` falls through to the command's own parser below.
        sub.add_parser(name, help=help_text, add_help=False)
    args, _ = parser.parse_known_args(argv)
    if not args.command:
        parser.print_help()
        return 2
    module = importlib.import_module(COMMANDS[args.command][0])
    command_parser = argparse.ArgumentParser(prog="kogpt2-serving " + args.command,
                                             description=COMMANDS[args.command][1])
    module.add_arguments(command_parser)
    rest = list(argv if argv is not None else sys.argv[1:])
    command_args = command_parser.parse_args(rest[rest.index(args.command) + 1:])
    logging.basicConfig(level=args.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        return module.run(command_args) or 0
    except ServingError as e:
        print("error: {}".format(e.message), file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
