"""Decode latency at KoGPT2 v1 size: the 2020 walkthrough's loop vs this engine vs a GEMV floor.

Variants run interleaved in one process (each repeat runs every variant once), so ratios are
comparable even when absolute numbers drift between runs:

  walkthrough  the 2020 handler's loop: re-tokenize the whole text, run the full sequence
               through the (hybridized) model with logits for every position, take the last
               argmax, append its piece to the text; once per generated token
  engine       this package: greedy through Generator (prefill once, KV cache, one token/step)
  sampling     the same with do_sample, top_k 50, top_p 0.95
  beam4        beam search with 4 beams (ms per generated token of the returned sequence)
  engine_bf16  the engine with its weights held in bfloat16 (--dtype bfloat16)
  floor        every weight matrix of one decode step (qkv, out, ffn in/out per layer, tied
               head once) through the 1x1 convolution decode steps use, as a product chain in one
               hybridized graph: the memory-bandwidth floor for a step in this process

All generation variants produce exactly --new-tokens tokens (min_new_tokens suppresses </s>).
Usage: python benchmarks/decode_latency.py [--quick] [--new-tokens 64] [--batch 8] [--model-dir DIR]
       [--output benchmarks/results/decode_latency.json]
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import common  # noqa: E402  (before MXNet: it sets the threads)


def parse_args():
    p = common.parser(__doc__, new_tokens=64, batch=8, repeats=3)
    p.epilog += "\n--quick: 16 new tokens, 1 repeat, no beam search"
    return p.parse_args()


def main():
    args = parse_args()
    if args.quick:
        args.new_tokens, args.repeats = 16, 1
    threads = common.setup_threads(args)
    loaded, generator = common.load(args)
    prompt = common.prompt_of(loaded.tokenizer, args.prompt_tokens)
    n, b = args.new_tokens, args.batch

    variants = {
        "walkthrough": lambda: common.walkthrough_loop(loaded, prompt, n),
        "engine": lambda: common.generate(generator, [prompt], n),
        "sampling": lambda: common.generate(generator, [prompt], n, {"do_sample": True, "top_k": 50, "top_p": 0.95,
                                                                    "seed": 1}),
        "floor": common.floor_step(loaded, batch=1, steps=n),
        "engine_b%d" % b: lambda: common.generate(generator, [prompt] * b, n),
        "floor_b%d" % b: common.floor_step(loaded, batch=b, steps=n),
    }
    skipped = common.skipped_bfloat16(["engine_bf16", "floor_bf16", "engine_bf16_b%d" % b, "floor_bf16_b%d" % b])
    if not skipped:
        loaded_bf16, generator_bf16 = common.load(args, dtype="bfloat16")
        variants.update({
            "engine_bf16": lambda: common.generate(generator_bf16, [prompt], n),
            "floor_bf16": common.floor_step(loaded_bf16, batch=1, steps=n),
            "engine_bf16_b%d" % b: lambda: common.generate(generator_bf16, [prompt] * b, n),
            "floor_bf16_b%d" % b: common.floor_step(loaded_bf16, batch=b, steps=n),
        })
    if not args.quick:
        variants["beam4"] = lambda: common.generate(generator, [prompt], n, {"num_beams": 4})
    seconds = common.interleaved(variants, args.repeats)
    samples = {name: [s * 1000 / n for s in runs] for name, runs in seconds.items()}
    report(samples, args, threads, skipped)


ROWS = [("walkthrough", "walkthrough loop (re-tokenize + full recompute)", False),
        ("engine", "engine greedy (KV cache)", False),
        ("sampling", "engine sampling top_k 50 top_p 0.95", False),
        ("beam4", "engine beam search, 4 beams", False),
        ("floor", "GEMV floor (weights of one step)", False),
        ("engine_bf16", "engine greedy, bfloat16 weights", False),
        ("floor_bf16", "GEMV floor, bfloat16 weights", False),
        ("engine", "engine greedy, batch %d", True),
        ("floor", "GEMV floor, batch %d", True),
        ("engine_bf16", "engine greedy, bfloat16 weights, batch %d", True),
        ("floor_bf16", "GEMV floor, bfloat16 weights, batch %d", True)]


def report(samples, args, threads, skipped):
    med = {name: common.median(v) for name, v in samples.items()}
    b = args.batch
    print("\nKoGPT2-size decode, %d-token prompt, %d new tokens, %d thread(s), %d repeat(s), median" % (
        args.prompt_tokens, args.new_tokens, threads, args.repeats))
    print("%-50s %10s %10s" % ("variant", "ms/token", "tokens/s"))
    for key, label, batched in ROWS:
        key, label, rows = ("%s_b%d" % (key, b), label % b, b) if batched else (key, label, 1)
        if key in med:
            print("%-50s %10.2f %10.1f" % (label, med[key], rows * 1000 / med[key]))
        elif key in skipped:
            print("%-50s skipped: %s" % (label, skipped[key]))
    ratios = {name: med[top] / med[bottom] for name, top, bottom in (
        ("walkthrough / engine", "walkthrough", "engine"), ("engine / floor", "engine", "floor"),
        ("sampling / greedy", "sampling", "engine"), ("engine b%d / floor b%d" % (b, b), "engine_b%d" % b, "floor_b%d" % b),
        ("engine / engine bf16", "engine", "engine_bf16"),
        ("engine b%d / engine bf16 b%d" % (b, b), "engine_b%d" % b, "engine_bf16_b%d" % b),
        ("engine bf16 / floor bf16", "engine_bf16", "floor_bf16"), ("beam4 / greedy", "beam4", "engine"))
        if top in med and bottom in med}
    print("\nratios")
    for name, value in ratios.items():
        print("  %-28s %6.2fx" % (name, value))
    if args.output:
        write_json(args, samples, med, ratios, threads, skipped)


def write_json(args, samples, med, ratios, threads, skipped):
    common.write_result(args.output, "decode_latency", args, common.thread_settings(threads), {
        "model": {"dir": common.model_dir(args), "random_weights": not args.model_dir},
        "ms_per_token_median": med, "samples_ms_per_token": samples, "ratios": ratios,
    }, skipped=skipped)


if __name__ == "__main__":
    main()
