"""`kogpt2-serving generate`: one-off generation from the command line."""
import json
import logging
import sys

from ..files.default_model import resolve_model_dir
from ..generation.params import FIELDS, parse_parameters
from ..model.device import DTYPES, configure_threads
from .progress import Progress

log = logging.getLogger(__name__)


def add_arguments(parser):
    parser.add_argument("prompt", nargs="+", help="prompt text (several prompts are decoded as one batch)")
    parser.add_argument("--model-dir", help="a KoGPT2 v1 directory (*.params, *.spiece, optional config.json) or a v2 "
                        "/ HF GPT-2 one (default: the SageMaker model directory if it holds a model, else the "
                        "shipped demo model)")
    parser.add_argument("--device", default="auto", help="auto | cpu | gpu | gpu:N (default: auto)")
    parser.add_argument("--dtype", default="float32", choices=DTYPES,
                        help="float16: GPU only; bfloat16: weights in bfloat16 on an AVX-512 CPU (MXNet >= 1.8); "
                             "int8: weights in int8 on a CPU (MXNet >= 1.7, builds its kernels on first use)")
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
    from ..generation.generator import Generator
    from ..files.loader import load_model

    model_dir = resolve_model_dir(args.model_dir, log)
    with Progress("loading model from {}".format(model_dir)):
        generator = Generator(load_model(model_dir, device=args.device, dtype=args.dtype))
    for prompt, sequences in zip(args.prompt, generator.generate(args.prompt, params)):
        for seq in sequences:
            text = prompt + seq.text if params.return_full_text else seq.text
            if args.json:
                print(json.dumps({"generated_text": text, "finish_reason": seq.finish_reason,
                                  "generated_tokens": seq.generated_tokens, "seed": seq.seed}, ensure_ascii=False))
            else:
                print(text)
    return 0
