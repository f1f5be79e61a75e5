"""Run the kernels (kogpt2_serving.kernels) over shapes that reach every edge of their tiling and
compare each output with a float64 NumPy product; print this process's ISA, then one line per case.

On AVX-512 VNNI the int8 kernel quantizes each row of x to 8 bits first: its reference is the
product over those 8-bit rows (numpy_reference.quantize_activations), and each case also reports
how far the result is from the exact product in units of the worst that nearest-level rounding
of x allows ("rounding", <= 1).

A process reads its kernel ISA cap once (KOGPT2_KERNEL_ISA / DNNL_MAX_CPU_ISA), so test_kernels
runs this file once per cap."""
import json
import sys

import numpy as np

from numpy_reference import quantize_activations

# (N rows, M outputs, K inputs): N past the 64-row chunk and not a multiple of the 4-row tile, M
# not a multiple of the 4-output tile, fewer than 4 (no full tile), K not a multiple of 8, 16 or 32
# (the vector tails), K < 8.
SHAPES = [(1, 2304, 768), (2, 7, 20), (3, 37, 5), (5, 64, 96), (70, 30, 33), (131, 12, 3072), (2, 3, 40)]
ZERO_ROW = (3, 37, 5)  # its row 1 is all zeros: an 8-bit row with no scale to take


def main():
    import mxnet as mx

    from kogpt2_serving import kernels

    kernels.load()
    rng = np.random.default_rng(0)
    isa = kernels.isa()
    print(isa)
    for n, m, k in SHAPES:
        x = rng.standard_normal((n, k)).astype("float32")
        if (n, m, k) == ZERO_ROW:
            x[1] = 0
        w8 = rng.integers(-127, 128, (m, k)).astype("int8")
        w32 = rng.standard_normal((m, k)).astype("float32")
        scale = (rng.random(m) + 0.5).astype("float32")
        bias = rng.standard_normal(m).astype("float32")
        x64 = x.astype("float64")
        q, q_scale = quantize_activations(x)
        x8 = q * q_scale if kernels.quantizes_activations() else x64  # what the int8 kernel multiplies
        cases = {
            "int8+bias": (mx.nd.kogpt2_linear_int8(mx.nd.array(x), mx.nd.array(w8, dtype="int8"), mx.nd.array(scale),
                                                   mx.nd.array(bias)), x8 @ w8.T * scale + bias),
            "int8": (mx.nd.kogpt2_linear_int8(mx.nd.array(x), mx.nd.array(w8, dtype="int8"), mx.nd.array(scale),
                                              no_bias=True), x8 @ w8.T * scale),
            "f32+bias": (mx.nd.kogpt2_linear_f32(mx.nd.array(x), mx.nd.array(w32), mx.nd.array(bias)),
                         x64 @ w32.T + bias),
        }
        for name, (out, ref) in cases.items():
            out = out.asnumpy()
            assert out.shape == ref.shape, (name, out.shape, ref.shape)
            # float32 sums of k terms: the error bound grows with k and with the terms' sizes
            int8 = "int8" in name
            weight = w8.astype("float64") * scale[:, None] if int8 else w32
            bound = 4e-7 * k * (np.abs(x8 if int8 else x64) @ np.abs(weight).T) + 1e-6
            line = {"case": name, "shape": [n, m, k], "worst": float((np.abs(out - ref) / bound).max())}
            if int8:
                exact = x64 @ weight.T + (bias if "bias" in name else 0)
                allowed = 0.5 * q_scale * np.abs(weight).sum(axis=1) * (1 + 1e-5) + bound
                line["rounding"] = float((np.abs(out - exact) / allowed).max())
            print(json.dumps(line))
    sys.stdout.flush()


if __name__ == "__main__":
    main()
