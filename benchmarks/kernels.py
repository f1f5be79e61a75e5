"""One decode step's weight products at KoGPT2 size through each kernel, side by side in one run.

A step multiplies its rows by 49 matrices (per layer qkv 2304x768, out 768x768, MLP 3072x768 and
768x3072; then the 50000x768 LM head): 497.5 MB in float32, 124.4 MB in int8. Variants, each over
the same random weights and activations, interleaved, best of --repeats:

  fc          MXNet FullyConnected (oneDNN), float32: what the prefill graph uses
  conv        the 1x1 convolution the decode steps use (model/network.py Linear.step), float32
  f32         kogpt2_linear_f32, our kernel over the same float32 weights
  int8        kogpt2_linear_int8, our kernel over int8 weights with per-output-channel scales
  int8_packed kogpt2_linear_int8_packed over the same int8 weights in the packed layout (AMX CPUs
              only: elsewhere skipped and listed)

Prints ms per step and GB/s of weights read per variant and row count, and the ratios to fc and
conv. The ISA our kernels use follows KOGPT2_KERNEL_ISA / DNNL_MAX_CPU_ISA (run it once with
DNNL_MAX_CPU_ISA=AVX2 on an AVX-512 CPU for the AVX2 class). Results: --output (JSON).
Usage: python benchmarks/kernels.py [--rows 1,8,16] [--repeats 5] [--variants f32,int8] [--output benchmarks/results/kernels.json]
"""
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402  (puts src/ on the path; threads are chosen before MXNet is imported)

UNITS, HIDDEN, VOCAB, LAYERS = 768, 3072, 50000, 12
SHAPES = [(3 * UNITS, UNITS), (UNITS, UNITS), (HIDDEN, UNITS), (UNITS, HIDDEN)] * LAYERS + [(VOCAB, UNITS)]
VARIANTS = ("fc", "conv", "f32", "int8", "int8_packed")
RATIOS = (("int8_packed", "int8"), ("int8_packed", "conv"), ("int8", "fc"), ("int8", "conv"), ("f32", "fc"),
          ("f32", "conv"))
STEPS = 3  # steps per timed run


def main(argv=None):
    import argparse

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", default="1,8,16")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--variants", default=",".join(VARIANTS), help="default: all ({})".format(",".join(VARIANTS)))
    parser.add_argument("--threads", type=int, help="OpenMP threads (default: all cores, see device.py)")
    parser.add_argument("--output")
    args = parser.parse_args(argv)
    threads = common.setup_threads(args)
    import mxnet as mx

    from kogpt2_serving import kernels
    from kogpt2_serving.model.device import capabilities

    kernels.load()
    weights = _weights(mx, kernels)
    asked = [v for v in args.variants.split(",") if v]
    unknown = sorted(set(asked) - set(VARIANTS))
    if unknown:
        parser.error("unknown variant(s) {}: choose from {}".format(", ".join(unknown), ", ".join(VARIANTS)))
    variants = [v for v in asked if v != "int8_packed" or kernels.packs_int8()]
    result = {"kernel_isa": kernels.isa(), "rows": {}, "skipped": {} if kernels.packs_int8() else {
        "int8_packed": "packed int8 weights need AMX; this process runs " + kernels.isa()}}
    print("# {}; our kernels: {}".format(capabilities().summary(), result["kernel_isa"]))
    for rows in [int(r) for r in args.rows.split(",")]:
        calls = _calls(mx, weights, rows)
        # the warm-up lets oneDNN re-lay the convolution kernels once
        samples = common.interleaved({v: _timed(mx, calls[v]) for v in variants}, args.repeats, progress=False)
        best = {v: min(t) / STEPS for v, t in samples.items()}
        result["rows"][rows] = {v: {"ms": best[v] * 1e3, "GB/s": _bytes(v) / best[v] / 1e9} for v in variants}
        print("rows {:3d}: ".format(rows) + "  ".join(
            "{} {:.2f} ms ({:.1f} GB/s)".format(v, best[v] * 1e3, _bytes(v) / best[v] / 1e9) for v in variants))
        ratios = ["{}/{} {:.2f}x".format(a, b, best[a] / best[b]) for a, b in RATIOS if a in best and b in best]
        if ratios:
            print("          " + "  ".join(ratios))
    if args.output:
        common.write_result(args.output, "kernels", args, {"mxnet": threads}, result, modules=("mxnet",))


def _bytes(variant):
    return sum(m * k for m, k in SHAPES) * (1 if variant.startswith("int8") else 4)


def _weights(mx, kernels):
    rng = np.random.default_rng(0)
    out = []
    for m, k in SHAPES:
        w = (rng.standard_normal((m, k)) * 0.02).astype("float32")
        scale = np.abs(w).max(axis=1) / 127
        q = np.round(w / scale[:, None]).astype("int8")
        packed = mx.nd.array(kernels.pack_int8(q), dtype="int8") if kernels.packs_int8() else None
        out.append((mx.nd.array(w), mx.nd.array(w.reshape(m, k, 1)), mx.nd.array(q, dtype="int8"),
                    mx.nd.array(scale.astype("float32")), packed))
    return out


def _calls(mx, weights, rows):
    rng = np.random.default_rng(1)
    x = {k: mx.nd.array(rng.standard_normal((rows, k)).astype("float32")) for k in (UNITS, HIDDEN)}
    cols = {k: mx.nd.transpose(v).expand_dims(0) for k, v in x.items()}  # (1, K, B)

    def fc():
        return [mx.nd.FullyConnected(x[k], w, no_bias=True, num_hidden=m) for (m, k), (w, *_) in zip(SHAPES, weights)]

    def conv():
        return [mx.nd.Convolution(cols[k], c, kernel=(1,), num_filter=m, no_bias=True)
                for (m, k), (_, c, *_) in zip(SHAPES, weights)]

    def f32():
        return [mx.nd.kogpt2_linear_f32(x[k], w, no_bias=True) for (m, k), (w, *_) in zip(SHAPES, weights)]

    def int8():
        return [mx.nd.kogpt2_linear_int8(x[k], q, s, no_bias=True) for (m, k), (_, _, q, s, _) in zip(SHAPES, weights)]

    def int8_packed():
        return [mx.nd.kogpt2_linear_int8_packed(x[k], p, s, no_bias=True)
                for (m, k), (_, _, _, s, p) in zip(SHAPES, weights)]

    return {"fc": fc, "conv": conv, "f32": f32, "int8": int8, "int8_packed": int8_packed}


def _timed(mx, call):
    """A run of STEPS steps that reports its own seconds (common.interleaved's contract)."""
    def run():
        mx.nd.waitall()
        started = time.perf_counter()
        for _ in range(STEPS):
            call()
            mx.nd.waitall()
        return time.perf_counter() - started

    return run


if __name__ == "__main__":
    main()
