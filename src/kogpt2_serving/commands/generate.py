"""`kogpt2-serving generate`: one-off generation from the command line."""
import json
import sys

from ..device import configure_threads
from ..params import FIELDS, parse_parameters


def add_arguments(parser):
    parser.add_argument("prompt", nargs="+", help="prompt text (several prompts are decoded as one batch)")
    parser.add_argument("--model-dir", required=True, help="directory with *.params, *.spiece, optional config.json")
    parser.add_argument("--device", default="auto", help="auto | cpu | gpu | gpu:N (default: auto)")
    parser.add_argument("--dtype", default="float32", choices=["float32", "float16"], help="float16: GPU only")
    parser.add_argument("--threads", type=int, help="CPU threads (default: all cores)")
    parser.add_argument("--parameters", default="{}",
                        help="generation parameters as JSON, e.g. '{\"max_new_tokens\": 32, \"do_sample\": true}' "
                             "(names: " + ", ".join(FIELDS) + ")")
    parser.add_argument("--json", action="store_true", help="print results as JSON lines")


def run(args):
    try:
        raw = json.loads(args.parameters)
    except ValueError as e:
        print("error: --parameters is not valid JSON: {}".format(e), file=sys.stderr)
        return 2
    params = parse_parameters(raw)
    configure_threads(override=args.threads)
    from ..generation import Generator
    from ..loader import load_model

    print("loading model from {} ...".format(args.model_dir), file=sys.stderr, flush=True)
    generator = Generator(load_model(args.model_dir, device=args.device, dtype=args.dtype))
    for prompt, sequences in zip(args.prompt, generator.generate(args.prompt, params)):
        for seq in sequences:
            text = prompt + seq.text if params.return_full_text else seq.text
            if args.json:
                print(json.dumps({"generated_text": text, "finish_reason": seq.finish_reason,
                                  "generated_tokens": seq.generated_tokens, "seed": seq.seed}, ensure_ascii=False))
            else:
                print(text)
    return 0
