"""Run the kernels (kogpt2_serving.kernels) over shapes that reach every edge of their tiling and
compare each output with a float64 NumPy product; print this process's ISA, then one line per case.
The attention step (kogpt2_attention_step) is compared with a float64 softmax written from the
definition, over masks that leave each row its own span of slots: left padding, a gap, unused
capacity, a row with no slot at all. Two shapes run the int8 product with activation="gelu" too,
for their digests (the same bytes on every ISA). Where int8 weights are held packed (AMX), the packed product
and lookup are checked too, against the same weights unpacked: rows past a tile's 16, an odd
number of 16-output blocks, ids out of range.

On AVX-512 VNNI the int8 kernel quantizes each row of x to 8 bits first: its reference is the
product over those 8-bit rows (numpy_reference.quantize_activations), and each case also reports
how far the result is from the exact product in units of the worst that nearest-level rounding
of x allows ("rounding", <= 1).

A process reads its kernel ISA cap once (KOGPT2_KERNEL_ISA / DNNL_MAX_CPU_ISA), so test_kernels
runs this file once per cap."""
import hashlib
import json
import sys

import numpy as np

from numpy_reference import quantize_activations

# (N rows, M outputs, K inputs): N past the 64-row chunk and not a multiple of the row tiles (4
# rows with VNNI, 6 otherwise), a tile of exactly 6 rows and passes of 6 + 4 (each fetching a part of
# the next tile), M not a multiple of the 4-output tile, fewer than 4 (no full tile), K not a multiple
# of 8, 16 or 32 (the vector tails), K < 8.
SHAPES = [(1, 2304, 768), (2, 7, 20), (3, 37, 5), (5, 64, 96), (6, 41, 300), (10, 96, 768), (70, 30, 33),
          (131, 12, 3072), (2, 3, 40)]
GELU_SHAPES = [(1, 2304, 768), (70, 30, 33)]  # one row of every vector width's loop and tail; many rows
ZERO_ROW = (3, 37, 5)  # its row 1 is all zeros: an 8-bit row with no scale to take


def main():
    import mxnet as mx

    from kogpt2_serving import kernels

    kernels.load()
    rng = np.random.default_rng(0)
    print(kernels.isa())
    check_products(mx, kernels, rng)
    check_attention(mx, rng)
    if kernels.packs_int8():
        check_packed(mx, kernels, rng)
    sys.stdout.flush()


# (N rows, M outputs, K inputs) for the packed layout: M a multiple of 16, K of 64
PACKED_SHAPES = [(1, 32, 64), (5, 48, 128), (17, 64, 192), (70, 16, 3072), (8, 2304, 768)]


def check_packed(mx, kernels, rng):
    for n, m, k in PACKED_SHAPES:
        x = rng.standard_normal((n, k)).astype("float32")
        w8 = rng.integers(-127, 128, (m, k)).astype("int8")
        scale = (rng.random(m) + 0.5).astype("float32")
        bias = rng.standard_normal(m).astype("float32")
        packed = mx.nd.array(kernels.pack_int8(w8), dtype="int8")
        q, q_scale = quantize_activations(x)
        weight = w8.astype("float64") * scale[:, None]
        ref = (q * q_scale) @ weight.T + bias
        out = mx.nd.kogpt2_linear_int8_packed(mx.nd.array(x), packed, mx.nd.array(scale), mx.nd.array(bias)).asnumpy()
        row_major = mx.nd.kogpt2_linear_int8(mx.nd.array(x), mx.nd.array(w8, dtype="int8"), mx.nd.array(scale),
                                             mx.nd.array(bias)).asnumpy()
        bound = 4e-7 * k * (np.abs(q * q_scale) @ np.abs(weight).T) + 1e-6
        print(json.dumps({"case": "int8_packed+bias", "shape": [n, m, k],
                          "worst": float((np.abs(out - ref) / bound).max()),
                          "equal": bool(np.array_equal(out, row_major))}))  # exact sums either way
    table = rng.integers(-127, 128, (48, 128)).astype("int8")
    scale = (rng.random(48) + 0.5).astype("float32")
    ids = np.array([[0, 47, 16], [5, -3, 60]])  # the last two out of range: clipped, as take does
    expected = table[np.clip(ids, 0, 47)] * scale[np.clip(ids, 0, 47)][..., None]
    packed = mx.nd.array(kernels.pack_int8(table), dtype="int8")
    for dtype in ("int32", "float32"):
        rows = mx.nd.kogpt2_lookup_int8_packed(mx.nd.array(ids, dtype=dtype), packed, mx.nd.array(scale)).asnumpy()
        print(json.dumps({"case": "lookup_packed", "dtype": dtype, "equal": bool(np.array_equal(rows, expected))}))


def check_products(mx, kernels, rng):
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
        x8 = q * q_scale  # what the int8 kernel multiplies: rows quantized to 8 bits on every ISA
        cases = {
            "int8+bias": (mx.nd.kogpt2_linear_int8(mx.nd.array(x), mx.nd.array(w8, dtype="int8"), mx.nd.array(scale),
                                                   mx.nd.array(bias)), x8 @ w8.T * scale + bias),
            "int8": (mx.nd.kogpt2_linear_int8(mx.nd.array(x), mx.nd.array(w8, dtype="int8"), mx.nd.array(scale),
                                              no_bias=True), x8 @ w8.T * scale),
            "f32+bias": (mx.nd.kogpt2_linear_f32(mx.nd.array(x), mx.nd.array(w32), mx.nd.array(bias)),
                         x64 @ w32.T + bias),
        }
        if (n, m, k) in GELU_SHAPES:  # the GELU, vectorized per ISA, gives the same bytes too
            cases["int8+gelu"] = (mx.nd.kogpt2_linear_int8(mx.nd.array(x), mx.nd.array(w8, dtype="int8"),
                                                           mx.nd.array(scale), mx.nd.array(bias), activation="gelu"),
                                  None)
        for name, (out, ref) in cases.items():
            out = out.asnumpy()
            if name == "int8+gelu":
                print(json.dumps({"case": name, "shape": [n, m, k], "digest": hashlib.sha1(out.tobytes()).hexdigest()}))
                continue
            assert out.shape == ref.shape, (name, out.shape, ref.shape)
            # float32 sums of k terms: the error bound grows with k and with the terms' sizes
            int8 = "int8" in name
            weight = w8.astype("float64") * scale[:, None] if int8 else w32
            bound = 4e-7 * k * (np.abs(x8 if int8 else x64) @ np.abs(weight).T) + 1e-6
            line = {"case": name, "shape": [n, m, k], "worst": float((np.abs(out - ref) / bound).max())}
            if int8:  # exact integer sums on every ISA: the same bytes everywhere
                line["digest"] = hashlib.sha1(out.tobytes()).hexdigest()
                exact = x64 @ weight.T + (bias if "bias" in name else 0)
                allowed = 0.5 * q_scale * np.abs(weight).sum(axis=1) * (1 + 1e-5) + bound
                line["rounding"] = float((np.abs(out - exact) / allowed).max())
            print(json.dumps(line))


MASKED = -1e4  # the model's masked score (model/network.py)
# (B rows, H heads, D head size, C slots, query scale, each row's [begin, end) or None, gaps)
# Spans of 129 and 69 slots (blocks of 64, then of 32 ending at the span's end), 50 and 36 (32,
# the last overlapping), 25 and 16 (16), 10 and 1 (slot by slot).
ATTENTION = [
    (1, 12, 64, 80, 1.0, [(0, 50)], []),                      # unused capacity after the row
    (4, 4, 64, 37, 1.0, [(0, 36), (5, 30), None, (10, 20)], [(3, 12, 15)]),  # pads, a free row, a gap
    (3, 2, 16, 19, 1.0, [(2, 18), (0, 1), (7, 8)], []),       # D other than 64, one-slot rows
    (2, 2, 64, 130, 8.0, [(0, 129), (60, 129)], []),          # large scores: softmax's shift
]


def check_attention(mx, rng):
    for rows, heads, size, slots, q_scale, spans, gaps in ATTENTION:
        units = heads * size
        qkv = rng.standard_normal((rows, 3 * units)).astype("float32")
        qkv[:, :units] *= q_scale
        keys = rng.standard_normal((rows, heads, size, slots)).astype("float32")  # (B, H, D, C)
        values = rng.standard_normal((rows, heads, slots, size)).astype("float32")  # (B, H, C, D)
        mask = np.full((rows, slots), MASKED, dtype="float32")
        for row, span in enumerate(spans):
            if span:
                mask[row, span[0]:span[1]] = 0
        for row, begin, end in gaps:
            mask[row, begin:end] = MASKED
        scale = 1 / np.sqrt(size)
        slot = slots - 1  # the next slot: masked in every row (the test spans end before it)
        mask[:, slot] = MASKED
        cache_keys, cache_values = mx.nd.array(keys.reshape(1, -1, slots)), mx.nd.array(values.reshape(1, -1, size))
        out = mx.nd.kogpt2_attention_step(
            mx.nd.array(qkv), mx.nd.array(mask), cache_keys, cache_values, mx.nd.array([slot], dtype="int32"),
            num_heads=heads, scale=scale).asnumpy()
        ref = attention_reference(qkv, mask, keys, values, scale)
        bound = 4e-7 * (slots + size) * np.abs(values).max() + 1e-6
        # the new token's key and value went into every row's and head's slot, and nothing else
        new_k, new_v = (qkv.reshape(rows, 3, heads, size)[:, i] for i in (1, 2))  # (B, H, D)
        keys[..., slot], values[:, :, slot, :] = new_k, new_v
        written = (np.array_equal(cache_keys.asnumpy().reshape(keys.shape), keys)
                   and np.array_equal(cache_values.asnumpy().reshape(values.shape), values))
        print(json.dumps({"case": "attention", "shape": [rows, heads, size, slots],
                          "worst": float((np.abs(out - ref) / bound).max()), "written": written}))


def attention_reference(qkv, mask, keys, values, scale):
    """Each row and head: softmax over its cache slots (mask added) and its new token, in float64."""
    rows, heads, size, slots = keys.shape
    q, k, v = (qkv.astype("float64").reshape(rows, 3, heads, size)[:, i] for i in range(3))  # (B, H, D)
    past = np.einsum("bhd,bhdc->bhc", q, keys) * scale + mask[:, None, :]  # (B, H, C)
    own = (q * k).sum(-1, keepdims=True) * scale  # (B, H, 1)
    scores = np.concatenate([past, own], axis=-1)
    weights = np.exp(scores - scores.max(-1, keepdims=True))
    weights /= weights.sum(-1, keepdims=True)
    out = np.einsum("bhc,bhcd->bhd", weights[..., :-1], values) + weights[..., -1:] * v  # (B, H, D)
    return out.reshape(rows, heads * size)


if __name__ == "__main__":
    main()
