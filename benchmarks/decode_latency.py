"""Decode latency at KoGPT2 v1 size: the 2020 walkthrough's loop vs this engine vs a GEMV floor.

Variants run interleaved in one process (each repeat runs every variant once), so ratios are
comparable even when absolute numbers drift between runs:

  walkthrough  the 2020 handler's loop: re-tokenize the whole text, run the full sequence
               through the (hybridized) model with logits for every position, take the last
               argmax, append its piece to the text; once per generated token
  engine       this package: greedy through Generator (prefill once, KV cache, one token/step)
  sampling     the same with do_sample, top_k 50, top_p 0.95
  beam4        beam search with 4 beams (ms per generated token of the returned sequence)
  floor        every weight matrix of one decode step (qkv, out, ffn in/out per layer, tied
               head once) through FullyConnected as a matrix-vector product chain in one
               hybridized graph: the memory-bandwidth floor for a step in this process

All generation variants produce exactly --new-tokens tokens (min_new_tokens suppresses </s>).
Usage: python benchmarks/decode_latency.py [--quick] [--new-tokens 64] [--batch 8] [--model-dir DIR]
"""
import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "src"))

from kogpt2_serving.device import configure_threads  # noqa: E402

PROMPT = "대한민국은 민주공화국이다. 대한민국의 주권은 국민에게 있고, 모든 권력은 국민으로부터 나온다."


def parse_args():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model-dir", help="a real model directory (default: random weights at KoGPT2 size)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--new-tokens", type=int, default=64)
    p.add_argument("--prompt-tokens", type=int, default=8)
    p.add_argument("--batch", type=int, default=8, help="batch size for the throughput rows")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int)
    p.add_argument("--quick", action="store_true", help="16 new tokens, 1 repeat, no beam search")
    p.add_argument("--output", help="write results as JSON here")
    return p.parse_args()


def main():
    args = parse_args()
    if args.quick:
        args.new_tokens, args.repeats = 16, 1
    threads = configure_threads(override=args.threads)
    from kogpt2_serving.generation import Generator
    from kogpt2_serving.loader import load_model
    from kogpt2_serving.testing import make_kogpt2_size_model

    model_dir = args.model_dir or make_kogpt2_size_model(tempfile.mkdtemp(prefix="kogpt2-bench-"))
    loaded = load_model(model_dir, device=args.device)
    generator = Generator(loaded)
    prompt = prompt_of(loaded.tokenizer, args.prompt_tokens)
    n = args.new_tokens

    variants = {
        "walkthrough": lambda: walkthrough_loop(loaded, prompt, n),
        "engine": lambda: generate(generator, [prompt], n, {}),
        "sampling": lambda: generate(generator, [prompt], n, {"do_sample": True, "top_k": 50, "top_p": 0.95, "seed": 1}),
        "floor": floor_step(loaded, batch=1, steps=n),
        "engine_b%d" % args.batch: lambda: generate(generator, [prompt] * args.batch, n, {}),
        "floor_b%d" % args.batch: floor_step(loaded, batch=args.batch, steps=n),
    }
    if not args.quick:
        variants["beam4"] = lambda: generate(generator, [prompt], n, {"num_beams": 4})
    for run in variants.values():  # warm-up: graphs built, caches allocated
        run()
    samples = {name: [] for name in variants}
    for _ in range(args.repeats):
        for name, run in variants.items():
            started = time.perf_counter()
            run()
            samples[name].append((time.perf_counter() - started) * 1000 / n)
    report(samples, args, threads, loaded)


def prompt_of(tokenizer, length):
    """A prompt text whose ids, <s> included, number exactly `length`."""
    ids = tokenizer.encode(PROMPT)[: length - 1]
    text = tokenizer.decode(ids)
    assert len(tokenizer.encode_prompt(text)) == length, "prompt length"
    return text


def generate(generator, prompts, n, extra):
    from kogpt2_serving.params import parse_parameters

    params = parse_parameters(dict({"max_new_tokens": n, "min_new_tokens": n}, **extra))
    results = generator.generate(prompts, params)
    assert all(seq.generated_tokens == n for seqs in results for seq in seqs)


def walkthrough_loop(loaded, prompt, n):
    """The 2020 handler's transform_fn loop with its bound added (it had none)."""
    import numpy as np

    tok, engine = loaded.tokenizer, loaded.engine
    text = prompt
    for _ in range(n):
        ids = tok.encode_prompt(text)  # re-tokenized every step
        logits = engine.full_logits([ids])  # (1, T, V): every position, as the original did
        token = int(np.argmax(logits[0, -1]))
        text += tok.id_to_piece(token).replace("\u2581", " ")


def floor_step(loaded, batch, steps):
    """A callable running `steps` GEMV chains over one decode step's weights."""
    import mxnet as mx
    from mxnet import gluon

    params = loaded.engine.model._collect_params_with_prefix()
    # qkv, out, ffn in/out of every layer, then the tied head (the embedding) once.
    weights = [p.data() for n, p in params.items() if n.endswith(".weight") and n.startswith(("_self", "_ffn"))]
    weights.append(params["_embed.weight"].data())

    class Chain(gluon.HybridBlock):
        def hybrid_forward(self, F, *inputs):
            half = len(inputs) // 2
            sums = [F.sum(F.FullyConnected(x, w, no_bias=True, num_hidden=w_shape[0]))
                    for x, w, w_shape in zip(inputs[:half], inputs[half:], shapes)]
            return F.add_n(*sums)

    shapes = [w.shape for w in weights]
    xs = [mx.nd.ones((batch, w.shape[1]), ctx=loaded.ctx, dtype=loaded.dtype) for w in weights]
    chain = Chain()
    chain.hybridize(static_alloc=True, static_shape=True)

    def run():
        for _ in range(steps):
            chain(*(xs + weights)).wait_to_read()

    return run


def report(samples, args, threads, loaded):
    med = {name: statistics.median(v) for name, v in samples.items()}
    b = args.batch
    rows = [
        ("walkthrough loop (re-tokenize + full recompute)", med["walkthrough"], "1"),
        ("engine greedy (KV cache)", med["engine"], "1"),
        ("engine sampling top_k 50 top_p 0.95", med["sampling"], "1"),
    ]
    if "beam4" in med:
        rows.append(("engine beam search, 4 beams", med["beam4"], "1"))
    rows += [("GEMV floor (weights of one step)", med["floor"], "1"),
             ("engine greedy, batch %d" % b, med["engine_b%d" % b], str(b)),
             ("GEMV floor, batch %d" % b, med["floor_b%d" % b], str(b))]
    print("\nKoGPT2-size decode, %d-token prompt, %d new tokens, %d thread(s), %d repeat(s), median" % (
        args.prompt_tokens, args.new_tokens, threads, args.repeats))
    print("%-50s %10s %10s" % ("variant", "ms/token", "tokens/s"))
    for label, ms, batch in rows:
        print("%-50s %10.2f %10.1f" % (label, ms, int(batch) * 1000 / ms))
    ratios = {
        "walkthrough / engine": med["walkthrough"] / med["engine"],
        "engine / floor": med["engine"] / med["floor"],
        "sampling / greedy": med["sampling"] / med["engine"],
        "engine b%d / floor b%d" % (b, b): med["engine_b%d" % b] / med["floor_b%d" % b],
    }
    if "beam4" in med:
        ratios["beam4 / greedy"] = med["beam4"] / med["engine"]
    print("\nratios")
    for name, value in ratios.items():
        print("  %-28s %6.2fx" % (name, value))
    if args.output:
        write_json(args, samples, med, ratios, threads, loaded)


def write_json(args, samples, med, ratios, threads, loaded):
    import mxnet as mx
    import numpy as np

    result = {
        "benchmark": "decode_latency", "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "machine": {"platform": platform.platform(), "processor": platform.processor(), "cpus": os.cpu_count()},
        "versions": {"python": platform.python_version(), "mxnet": mx.__version__, "numpy": np.__version__},
        "threads": threads, "env": {k: os.environ.get(k) for k in ("OMP_NUM_THREADS", "MXNET_CPU_PARALLEL_SIZE")},
        "args": vars(args), "ms_per_token_median": med, "samples_ms_per_token": samples, "ratios": ratios,
        "command": " ".join(sys.argv),
    }
    with open(args.output, "w") as f:
        json.dump(result, f, indent=2)


if __name__ == "__main__":
    main()
