"""An independent NumPy forward pass of KoGPT2 v1, written from the math (not from model.py).

Reads parameters by their structural names straight from a `.params` file.
"""
import math

import numpy as np
from scipy.special import erf


def load_numpy_params(path):
    import mxnet as mx

    raw = mx.nd.load(path)
    return {k: v.asnumpy().astype(np.float64) for k, v in raw.items()}


def layer_norm(x, gamma, beta, eps):
    mean = x.mean(-1, keepdims=True)
    var = ((x - mean) ** 2).mean(-1, keepdims=True)
    return (x - mean) / np.sqrt(var + eps) * gamma + beta


def gelu(x, kind):
    if kind == "erf":
        return 0.5 * x * (1 + erf(x / math.sqrt(2)))
    return 0.5 * x * (1 + np.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x ** 3)))


def round_to_bfloat16(x):
    """Round to the nearest bfloat16 (ties to even), returned as float64: bfloat16 is the top
    half of a float32's bits."""
    bits = np.ascontiguousarray(x, dtype=np.float32).view(np.uint32).astype(np.uint64)
    bits = (bits + 0x7FFF + ((bits >> 16) & 1)) & 0xFFFF0000
    return bits.astype(np.uint32).view(np.float32).astype(np.float64)


def dense(x, w, b=None):
    return x @ w.T + (0 if b is None else b)


def bfloat16_dense(x, w, b=None):
    """A product as a bfloat16 kernel runs it: bfloat16 input, weights and bias, float32
    accumulation (here float64), result rounded to bfloat16."""
    b = None if b is None else round_to_bfloat16(b)
    return round_to_bfloat16(dense(round_to_bfloat16(x), round_to_bfloat16(w), b))


def quantize_rows(w):
    """w (N, K) -> (int8 values (N, K), float32 scales (N,)), symmetric per row, written from
    the definition: scale = max|row| / 127 (1 for an all-zero row), value = w / scale rounded
    half away from zero, in float32 as the model computes them."""
    w = np.asarray(w, dtype=np.float32)
    absmax = np.abs(w).max(axis=1)
    scale = np.where(absmax > 0, absmax / np.float32(127), np.float32(1)).astype(np.float32)
    ratio = w / scale[:, None]
    values = np.clip(np.sign(ratio) * np.floor(np.abs(ratio) + np.float32(0.5)), -127, 127)
    return values.astype(np.int8), scale


def int8_table(w):
    """The table an int8 model reads: its quantized values times their scales."""
    values, scale = quantize_rows(w)
    return values.astype(np.float64) * scale[:, None]


def quantize_activations(x):
    """x (..., K) -> (q (..., K) in [-127, 127], scale (..., 1)), both float64, as the int8 kernel
    quantizes each row of its input (on every ISA): scale = max|row| / 127, q = x * (127 /
    max|row|) rounded to nearest even, computed in float32 as the kernel computes them."""
    x = np.asarray(x, dtype=np.float32)
    amax = np.abs(x).max(axis=-1, keepdims=True)
    inv = np.where(amax > 0, np.float32(127) / np.where(amax > 0, amax, 1), np.float32(0)).astype(np.float32)
    q = np.clip(np.rint(x * inv), -127, 127)
    return q.astype(np.float64), (amax / np.float32(127)).astype(np.float64)


def int8_activations_dense(x, w, b=None):
    """A product over int8 weights with per-output scales, each row of x quantized to 8 bits first
    (as the int8 kernel does): exact sums (float64)."""
    q, scale = quantize_activations(x)
    return dense(q * scale, int8_table(w), b)


def forward(p, ids, n_layer, n_head, eps=1e-5, act="erf", linear=dense, table=lambda t: t, attention=None,
            token_table=None):
    """ids (T,) -> logits (T, V). Dense weights are (out, in): y = x W^T + b.
    `linear` computes every Dense product and `table` transforms embedding tables (e.g.
    bfloat16_dense and round_to_bfloat16 for a model holding its weights in bfloat16);
    `token_table`, when given, transforms the token table alone (int8 keeps positions float32).
    A list passed as `attention` receives every layer's weights, (H, T, T) each."""
    T = len(ids)
    tokens = (token_table or table)(p["_embed.weight"])
    x = tokens[ids] + table(p["_pos_embed.weight"])[np.arange(T)]  # (T, U)
    U = x.shape[1]
    D = U // n_head
    causal = np.tril(np.ones((T, T), dtype=bool))
    for i in range(n_layer):
        a = "_self_attention_layers.%d." % i
        h = layer_norm(x, p["_attn_ln.%d.gamma" % i], p["_attn_ln.%d.beta" % i], eps)
        qkv = linear(h, p[a + "_multi_head_qkv_proj.weight"], p[a + "_multi_head_qkv_proj.bias"])  # (T, 3U)
        q, k, v = qkv[:, :U], qkv[:, U:2 * U], qkv[:, 2 * U:]
        heads, weights = [], []
        for head in range(n_head):
            cols = slice(head * D, (head + 1) * D)
            scores = q[:, cols] @ k[:, cols].T / math.sqrt(D)  # (T, T)
            scores = np.where(causal, scores, -np.inf)
            w = np.exp(scores - scores.max(-1, keepdims=True))
            w /= w.sum(-1, keepdims=True)
            heads.append(w @ v[:, cols])  # (T, D)
            weights.append(w)
        if attention is not None:
            attention.append(np.stack(weights))
        attn = linear(np.concatenate(heads, axis=1), p[a + "_out_proj.weight"], p[a + "_out_proj.bias"])
        x = x + attn
        f = "_ffn_layers.%d." % i
        h = layer_norm(x, p["_ffn_ln.%d.gamma" % i], p["_ffn_ln.%d.beta" % i], eps)
        h = gelu(linear(h, p[f + "_hidden_map.weight"], p[f + "_hidden_map.bias"]), act)
        x = x + linear(h, p[f + "_out_map.weight"], p[f + "_out_map.bias"])
    x = layer_norm(x, p["_final_ln.gamma"], p["_final_ln.beta"], eps)
    return linear(x, p["_embed.weight"])  # tied head, no bias


def greedy(p, ids, steps, n_layer, n_head, act="erf", eos_id=None):
    ids = list(ids)
    out = []
    for _ in range(steps):
        token = int(np.argmax(forward(p, np.array(ids), n_layer, n_head, act=act)[-1]))
        out.append(token)
        ids.append(token)
        if token == eos_id:
            break
    return out
