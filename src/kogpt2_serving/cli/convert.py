"""`kogpt2-serving convert`: write a model directory (KoGPT2 v2 / HF GPT-2, or v1 in any key
layout) in the v1 layout: structural `*.params`, tokenizer, full config.json."""
import sys

from ..model.device import configure_threads


def add_arguments(parser):
    parser.add_argument("--from", dest="source", required=True, metavar="DIR",
                        help="model directory: KoGPT2 v1 (*.params + *.spiece) or HuggingFace GPT-2 "
                             "(model.safetensors or pytorch_model.bin + tokenizer.json + config.json)")
    parser.add_argument("--to", dest="dest", required=True, metavar="DIR",
                        help="new (or empty) directory for *.params + tokenizer + config.json")
    parser.add_argument("--threads", type=int, help="CPU threads (default: all cores)")


def run(args):
    configure_threads(override=args.threads)
    from ..files.convert import convert

    print("converting {} ...".format(args.source), file=sys.stderr, flush=True)
    files = convert(args.source, args.dest)
    print("wrote {} ({}):".format(args.dest, files.format))
    for path in files.paths():
        print("  " + path)
    return 0
