"""How far int8 weights (--dtype int8) move the model from float32, published next to its speed.

Two models, each loaded in float32 and in int8 in this process:
  kogpt2   KoGPT2 v1's size and shapes (124M parameters, vocabulary 50,000) with random weights
           (no real KoGPT2 weights can be downloaded here; --model-dir takes real ones)
  demo     the shipped demo model: trained weights, so its numbers say what quantization costs
           a model that has learned something (random logits are nearly flat, which makes
           argmax agreement harder than on a trained model)
For each: over several prompts, the logits of the prompt and of --steps cached steps fed the
float32 model's greedy tokens (max abs and relative error, argmax agreement per step); greedy
--new-tokens decoding from each prompt (tokens equal to float32's, and how many lead before the
first difference); and for the demo model its held-out perplexity in both (target: int8 within
2% of float32).
Usage: python benchmarks/int8_accuracy.py [--model-dir DIR] [--output benchmarks/results/int8_accuracy.json]
"""
import io
import json
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402

PROMPTS = ["대한민국은 민주공화국이다.", "대한민국의 주권은 국민에게 있고,", "아기 공룡 둘리는 희동이와 함께",
           "국회는 법률에 저촉되지 아니하는 범위 안에서", "모든 국민은 인간으로서의 존엄과 가치를 가지며,"]


def main(argv=None):
    p = common.parser(__doc__, new_tokens=64)
    p.add_argument("--steps", type=int, default=16,
                   help="cached steps whose logits are compared (default: %(default)s)")
    args = p.parse_args(argv)
    if args.quick:
        args.new_tokens, args.steps = 8, 2
    threads = common.setup_threads(args)
    from kogpt2_serving.files.default_model import DEMO_MODEL_DIR

    result = {"prompts": PROMPTS, "steps": args.steps, "new_tokens": args.new_tokens, "models": {}}
    for name, directory in (("kogpt2", common.model_dir(args)), ("demo", DEMO_MODEL_DIR)):
        result["models"][name] = measure(name, directory, args)
    if args.output:
        common.write_result(args.output, "int8_accuracy", args, {"mxnet": threads}, result, modules=("mxnet",))


def measure(name, directory, args):
    from kogpt2_serving.files.loader import load_model
    from kogpt2_serving.generation.generator import Generator

    models = {dtype: load_model(directory, device=args.device, dtype=dtype) for dtype in ("float32", "int8")}
    f32, int8 = models["float32"], models["int8"]
    found = {"random_weights": name == "kogpt2" and not args.model_dir,
             "logits": logits_agreement(f32, int8, args.steps),
             "greedy": greedy_agreement(Generator(f32), Generator(int8), args.new_tokens)}
    if name == "demo":
        found["heldout_perplexity"] = {dtype: heldout_perplexity(m) for dtype, m in models.items()}
        found["heldout_perplexity"]["int8 / float32"] = (found["heldout_perplexity"]["int8"] /
                                                          found["heldout_perplexity"]["float32"])
    report(name, found)
    return found


def logits_agreement(f32, int8, steps):
    """Prompt then `steps` cached steps, both models fed float32's greedy tokens."""
    worst_abs, worst_rel, agree, total = 0.0, 0.0, 0, 0
    for prompt in PROMPTS:
        ids = f32.tokenizer.encode_prompt(prompt)
        (state_a, a), (state_b, b) = f32.engine.start([ids], steps + 1), int8.engine.start([ids], steps + 1)
        for step in range(steps + 1):
            worst_abs = max(worst_abs, float(np.abs(a - b).max()))
            worst_rel = max(worst_rel, float(np.abs(a - b).max() / np.abs(a).max()))
            agree, total = agree + int(a.argmax() == b.argmax()), total + 1
            if step < steps:
                token = [int(a.argmax())]
                a, b = f32.engine.step(state_a, token), int8.engine.step(state_b, token)
    return {"max_abs_diff": worst_abs, "max_relative_diff": worst_rel, "argmax_agreement": agree / total,
            "positions": total}


def greedy_agreement(f32, int8, n):
    from kogpt2_serving.generation.params import parse_parameters

    params = parse_parameters({"max_new_tokens": n, "min_new_tokens": n})
    equal, leads = 0, []
    for prompt in PROMPTS:
        a = f32.generate([prompt], params)[0][0].token_ids
        b = int8.generate([prompt], params)[0][0].token_ids
        equal += sum(x == y for x, y in zip(a, b))
        leads.append(next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), n))
    return {"tokens_equal": equal / (n * len(PROMPTS)), "identical_prefix_tokens": leads,
            "identical_sequences": sum(lead == n for lead in leads), "sequences": len(PROMPTS)}


def heldout_perplexity(loaded):
    from kogpt2_serving.files.default_model import DEMO_MODEL_DIR
    from kogpt2_serving.generation.perplexity import model_nll

    with io.open(os.path.join(DEMO_MODEL_DIR, "metrics.json"), encoding="utf-8") as f:
        window = json.load(f)["window"]
    with io.open(os.path.join(DEMO_MODEL_DIR, "heldout.txt"), encoding="utf-8") as f:
        lines = [line for line in f.read().splitlines() if line]
    tok = loaded.tokenizer
    ids = [i for line in lines for i in [tok.bos_id] + tok.encode(line) + [tok.eos_id]]
    return float(np.exp(model_nll(loaded.engine, ids, window)[0]))


def report(name, found):
    lg, gr = found["logits"], found["greedy"]
    print("%s%s: logits max |diff| %.4f (%.2e of the largest), argmax agreement %.1f%% of %d positions; greedy: "
          "%.1f%% of tokens equal, %d/%d sequences identical, identical prefixes %s" % (
              name, " (random weights)" if found["random_weights"] else "", lg["max_abs_diff"], lg["max_relative_diff"],
              100 * lg["argmax_agreement"], lg["positions"], 100 * gr["tokens_equal"], gr["identical_sequences"],
              gr["sequences"], gr["identical_prefix_tokens"]))
    ppl = found.get("heldout_perplexity")
    if ppl:
        print("%s: held-out perplexity float32 %.3f, int8 %.3f (x%.4f; target within 2%%: %s)" % (
            name, ppl["float32"], ppl["int8"], ppl["int8 / float32"],
            "met" if abs(ppl["int8 / float32"] - 1) < 0.02 else "NOT met"))


if __name__ == "__main__":
    main()
