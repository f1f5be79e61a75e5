"""KoGPT2 v1 as a Gluon HybridBlock, plus the two hybridized graphs decoding runs on.

Semantics follow the original model exactly: pre-LN blocks, learned positions, fused qkv
Dense laid out [q | k | v], causal attention scaled by 1/sqrt(head size), GELU (exact erf by
default), final LayerNorm, and an LM head without bias tied to the token embedding.

Each transformer layer is one `DecoderLayer` (LayerNorm, attention, LayerNorm, feed-forward),
and the network holds one list of them (`layers`). GluonNLP's GPT2Model, whose `save_parameters`
named KoGPT2 v1's checkpoints, kept four parallel lists instead (`_self_attention_layers`,
`_ffn_layers`, `_attn_ln`, `_ffn_ln`), so the checkpoint's names (`_attn_ln.3.gamma`) are not this
network's (`layers.3.attn_ln.gamma`); the other attribute names are GluonNLP's (`_embed`,
`_final_ln`, `_logits_proj`, `_multi_head_qkv_proj`, `_out_map`, ...). The weight table
(weights.py) pairs the two names of every weight; `named_weights` keys the parameters by the
checkpoint's, and files/checkpoint.py reads and writes checkpoints through it (never through
Gluon's `save_parameters`/`load_parameters`, which would use this network's names).

Decoding uses two graphs that share the model's parameters:
- `PrefillGraph`: the whole (left-padded) prompt batch in one pass; returns the last
  position's logits and every layer's keys/values for the cache. Where float32 steps use our
  kernel, the engine holds a second one for prefills of few tokens (`Linear.full`).
- `StepGraph`: one new token per row against a preallocated cache of fixed capacity. The new
  token's key/value is scored separately from the cache (one softmax over both), so the cache
  is only read inside the graph; the engine writes the new column afterwards with one slice
  assignment per cache. Shapes stay fixed for a whole generation; there is one graph per
  batch size. Its matrix products are 1x1 convolutions over a second copy of each weight
  (`Linear.step`), which oneDNN keeps in its own blocked layout.
"""
import math

import numpy as np
from mxnet import gluon, symbol
from mxnet.gluon import nn

from .compat import load_parameter, structural_parameters
from .weights import TIED, in_checkpoint_order, weights

MASKED = -1e4  # additive score for masked slots; finite and representable in float16
# How MXNet spells bfloat16 as a NumPy dtype; the string "bfloat16" only works where
# ml_dtypes has registered one with NumPy.
BFLOAT16 = np.dtype([("bfloat16", np.uint16)])
# Decode steps with more rows keep FullyConnected: beyond 64 columns oneDNN prefers another
# blocked layout for the step kernels, and each switch of layout re-lays every weight.
MAX_CONV_ROWS = 64
STEP_WEIGHT = "step_weight"
INT8_SCALE = "weight_scale"


class Linear(nn.Dense):
    """nn.Dense whose weights may be held in bfloat16 (`store_weights_in_bfloat16`) or in int8
    with one float32 scale per output (model/int8_weights.py).

    Decoding reads every weight once per token, so fewer bytes read is what makes a
    memory-bound CPU faster. Only the matrix product changes: bfloat16 runs through oneDNN
    (its input rounded to bfloat16, float32 accumulation), int8 through our own kernel
    (kernels/linear.cc: input rows quantized to 8 bits and exact integer sums, the same on every
    CPU). Residuals, LayerNorm, softmax and the KV cache stay float32."""

    bfloat16 = False
    int8 = False
    int8_packed = False  # the int8 weight is held in the packed layout (model/int8_weights.py)
    f32_steps = False  # decode steps through kogpt2_linear_f32 (use_f32_kernel_for_steps)

    def __init__(self, units, in_units, **kwargs):
        super().__init__(units, in_units=in_units, **kwargs)
        self.out_units = units
        # The weight again as a (units, in_units, 1) convolution kernel for decode steps; not
        # part of the checkpoint: `fill_step_weights` copies it from `weight`.
        self.step_weight = self.params.get(STEP_WEIGHT, shape=(units, in_units, 1), grad_req="null",
                                           allow_deferred_init=True)
        # Per-output scales of int8 weights; never allocated unless the weights are quantized.
        # The tied LM head finds its table's (Lookup's) in the shared parameter dict.
        self.weight_scale = _scale_parameter(self, units)

    def hybrid_forward(self, F, x, weight, bias=None, step_weight=None, weight_scale=None):
        if self.int8:
            return _int8_product(F, x, weight, weight_scale, bias, self.int8_packed)
        if not self.bfloat16:
            return super().hybrid_forward(F, x, weight, bias)
        out = super().hybrid_forward(F, F.amp_cast(x, dtype=BFLOAT16), weight, bias)
        return F.amp_cast(out, dtype="float32")

    def step(self, F, x, rows, residual=None, gelu=False):
        """x (B, K) -> (B, N) for a decode step, plus `residual` (B, N) if given, or through GELU
        (erf form) with `gelu` (not both).

        int8 weights go through their own kernel, which reads them as stored, and so do float32
        steps where our kernels run (use_f32_kernel_for_steps). Those kernels add the residual
        as they write the output, and apply GELU to it: one operator fewer each (the 24 adds of
        a KoGPT2 int8 step at one row cost 5% of it, the 12 GELUs 6%). Elsewhere oneDNN
        computes the step (_onednn_step) and MXNet's operators add and activate after it.
        """
        bias = _value(F, self.bias) if self.bias is not None else None
        if self.int8:
            return _int8_product(F, x, _value(F, self.weight), _value(F, self.weight_scale), bias,
                                 self.int8_packed, residual, gelu)  # (B, N)
        if self.f32_steps:
            return self._f32_kernel(F, x, residual, gelu)  # (B, N)
        out = self._onednn_step(F, x, rows, bias)  # (B, N)
        if gelu:
            out = F.LeakyReLU(out, act_type="gelu")  # MXNet's gelu is the exact erf form
        return out if residual is None else residual + out

    def _onednn_step(self, F, x, rows, bias):
        """x (B, K) -> (B, N) as a 1x1 convolution over B columns.

        MXNet's FullyConnected hands oneDNN the weight in its plain layout, and for more than
        one row oneDNN's gemm repacks it on every call. A convolution's kernel is re-laid into
        oneDNN's blocked layout once, in place, on first use, and read at memory speed from
        then on. The copy costs a second set of weights in memory. Measurements:
        docs/serving.md ("Memory per worker") and benchmarks/README.md.
        """
        if rows > MAX_CONV_ROWS:
            return self(x)
        kernel = _value(F, self.step_weight)
        cols = F.transpose(x).expand_dims(0)  # (1, K, B)
        if self.bfloat16:
            cols = F.amp_cast(cols, dtype=BFLOAT16)
        out = F.Convolution(cols, kernel, bias, kernel=(1,), num_filter=self.out_units,
                            no_bias=bias is None)  # (1, N, B)
        if self.bfloat16:
            out = F.amp_cast(out, dtype="float32")  # (bfloat16 has no transpose kernel)
        return F.transpose(out.reshape((self.out_units, rows)))  # (B, N)

    def full(self, F, x, few_rows=False):
        """x (..., K) -> (..., N) for a full pass. With `few_rows` (a short prefill) through our
        float32 kernel where this layer's steps use it: at a few dozen rows it takes half the time
        of oneDNN's FullyConnected, which repacks the weight on every call; beyond, oneDNN's gemm
        computes faster (benchmarks/kernels.py)."""
        if few_rows and self.f32_steps:
            return self._f32_kernel(F, x)
        return self(x)

    def _f32_kernel(self, F, x, residual=None, gelu=False):
        """x (..., K) -> (..., N) through kogpt2_linear_f32 over the layer's own weight (plus
        `residual`, or through GELU, if asked)."""
        bias = _value(F, self.bias) if self.bias is not None else None
        return _kernel_product(F.kogpt2_linear_f32, [x, _value(F, self.weight)], bias, residual, gelu)


def _int8_product(F, x, weight, scale, bias, packed, residual=None, gelu=False):
    """x (..., K) float32, weight (N, K) int8 (packed or not), scale (N,) -> (..., N) float32:
    x . (weight * scale) + bias (+ residual (..., N), or through GELU, if asked)."""
    product = F.kogpt2_linear_int8_packed if packed else F.kogpt2_linear_int8
    return _kernel_product(product, [x, weight, scale], bias, residual, gelu)


def _kernel_product(product, inputs, bias, residual, gelu=False):
    """One of our product operators over `inputs`, with its optional bias and residual inputs
    and its optional GELU."""
    optional = [t for t in (bias, residual) if t is not None]
    attrs = {"activation": "gelu"} if gelu else {}
    return product(*(inputs + optional), no_bias=bias is None, residual=residual is not None, **attrs)


def _scale_parameter(block, rows):
    return block.params.get(INT8_SCALE, shape=(rows,), dtype="float32", grad_req="null",
                            allow_deferred_init=True)


class Lookup(nn.Embedding):
    """nn.Embedding whose table may be held in bfloat16 or int8 (one scale per row, the tied LM
    head's per-output scales); rows come back as float32."""

    bfloat16 = False
    int8 = False
    int8_packed = False  # the tied table is held packed: its rows are gathered by our kernel

    def __init__(self, input_dim, output_dim, **kwargs):
        super().__init__(input_dim, output_dim, **kwargs)
        self.weight_scale = _scale_parameter(self, input_dim)

    def hybrid_forward(self, F, x, weight, weight_scale=None):
        if self.int8_packed:
            return F.kogpt2_lookup_int8_packed(x, weight, weight_scale)  # (..., U)
        if self.int8:
            rows = F.cast(F.take(weight, x, axis=0), dtype="float32")  # (..., U)
            return F.broadcast_mul(rows, F.take(weight_scale, x, axis=0).expand_dims(-1))
        out = super().hybrid_forward(F, x, weight)
        return F.amp_cast(out, dtype="float32") if self.bfloat16 else out


def store_weights_in_bfloat16(model):
    """Round every Linear/Lookup weight (the tied embedding once) to bfloat16, in place, before
    the first forward pass builds a graph. LayerNorm parameters stay float32."""
    for block in blocks(model, (Linear, Lookup)):
        block.bfloat16 = True
        for param in (block.weight, getattr(block, "bias", None)):
            if param is not None and param.dtype != BFLOAT16:
                _round_to_bfloat16(param)


def _round_to_bfloat16(param):
    """amp_cast rounds to nearest; Parameter.cast (NDArray.astype) would truncate, a bias
    towards zero that doubles the rounding error."""
    from mxnet import nd

    rounded = nd.amp_cast(param.data(), dtype=BFLOAT16)
    param.cast(BFLOAT16)
    param.set_data(rounded)


def _value(F, param):
    """A parameter inside a graph being traced (its symbol) or run eagerly (its array): for
    calling a block's parameters from a method other than hybrid_forward."""
    return param.var() if F is symbol else param.data()


def use_f32_kernel_for_steps(model):
    """Decode steps of float32 weights through our kernel (kernels/linear.cc), which reads the
    weights as stored: no step copy. Measured on AVX2 CPUs, where oneDNN's products read the
    weights at half its speed (benchmarks/kernels.py); call before the first step graph."""
    for linear in blocks(model, Linear):
        linear.f32_steps = True


def use_attention_kernel(model):
    """Decode steps' attention through kogpt2_attention_step (kernels/attention.cc): one
    operator per layer instead of ~20, each row reading only the slots it uses. Call before the
    first step graph; CPU only (the kernels are CPU operators)."""
    for attention in blocks(model, SelfAttention):
        attention.kernel_step = True


def fill_step_weights(model):
    """Copy every Linear's weight into its step kernel (as stored: bfloat16 stays bfloat16;
    int8 weights and steps through our float32 kernel need none). Call after the weights are
    final; a later change to `weight` is not seen by steps."""
    for linear in blocks(model, Linear):
        if linear.int8 or linear.f32_steps:
            continue
        weight = linear.weight.data()  # (N, K)
        linear.step_weight.cast(weight.dtype)
        # load_parameter copies the (N, K, 1) view into the kernel's own array.
        load_parameter(linear.step_weight, weight.reshape((weight.shape[0], weight.shape[1], 1)), weight.context)


def blocks(model, kind):
    found = []
    model.apply(lambda block: found.append(block) if isinstance(block, kind) else None)
    return found


class SelfAttention(gluon.HybridBlock):
    """Multi-head self-attention with a fused qkv projection."""

    kernel_step = False  # decode steps through kogpt2_attention_step (use_attention_kernel)

    def __init__(self, units, num_heads, **kwargs):
        super().__init__(**kwargs)
        self._units = units
        self._num_heads = num_heads
        self._scale = 1.0 / math.sqrt(units // num_heads)
        with self.name_scope():
            self._multi_head_qkv_proj = Linear(3 * units, in_units=units, flatten=False)
            self._out_proj = Linear(units, in_units=units, flatten=False)

    def full(self, F, x, mask, few_rows=False):
        """x (B, T, U), additive mask (B, T, T) -> out (B, T, U), keys (B, H, D, T) (transposed,
        as the cache holds them) and values (B, H, T, D). `few_rows`: see Linear.full."""
        q, k, v = F.split(self._multi_head_qkv_proj.full(F, x, few_rows), num_outputs=3, axis=-1)  # 3 x (B, T, U)
        q, k, v = [self._heads(F, t) for t in (q, k, v)]  # (B, H, T, D)
        scores = F.batch_dot(q.reshape((-3, -2)), k.reshape((-3, -2)), transpose_b=True)  # (B*H, T, T)
        scores = F.broadcast_add(scores.reshape((-4, -1, self._num_heads, -2)) * self._scale,
                                 mask.expand_dims(1))  # (B, H, T, T)
        weights = F.softmax(scores, axis=-1).reshape((-3, -2))  # (B*H, T, T)
        out = F.batch_dot(weights, v.reshape((-3, -2)))  # (B*H, T, D)
        out = out.reshape((-4, -1, self._num_heads, -2)).transpose((0, 2, 1, 3))  # (B, T, H, D)
        return self._out_proj.full(F, out.reshape((0, 0, -1)), few_rows), k.transpose((0, 1, 3, 2)), v

    def step(self, F, x, mask, keys, values, rows, slot=None, residual=None):
        """One token per row against the cache.

        x (B, U); mask (B, C) additive over cache slots; keys (1, B*H*D, C): every head's
        cached keys transposed; values (1, B*H*C, D). `rows` is B, fixed per graph.
        Returns out (B, U) and the new token's key (B, H, D, 1) and value (B, H, 1, D).

        Both products with the cache are grouped 1x1 convolutions with one group per (row,
        head), the cache being the convolution's data: MXNet's CPU batch_dot loops over the
        B*H small products one at a time, the convolution reads the cache once, in place, at
        memory speed (measured in benchmarks/README.md). Caches arrive already flattened because
        reshaping a graph input inside a static graph copies it.

        Where our kernels run (`kernel_step`), one operator does all of it instead
        (kernels/attention.cc), each row reading only its own slots rather than the cache's
        whole capacity, and writes the new token's key and value into the cache at `slot` (a
        (1,) int32 input) itself: then the new key and value returned are None.

        `residual` (B, U), if given, is added to the output (Linear.step).
        """
        h, d = self._num_heads, self._units // self._num_heads
        groups = rows * h
        qkv = self._multi_head_qkv_proj.step(F, x, rows)  # (B, 3U)
        if self.kernel_step:
            out = F.kogpt2_attention_step(qkv, mask, keys, values, slot, num_heads=h, scale=self._scale)  # (B, U)
            return self._out_proj.step(F, out, rows, residual), None, None
        q, k, v = F.split(qkv, num_outputs=3, axis=-1)  # 3 x (B, U)
        # With one position, (B, H*D) is already laid out as (B*H, D) per head.
        past = F.Convolution(keys, q.reshape((groups, d, 1)), kernel=(1,), num_filter=groups,
                             num_group=groups, no_bias=True)  # (1, B*H, C)
        past = F.broadcast_add(past.reshape((rows, h, -1)) * self._scale, mask.expand_dims(1))  # (B, H, C)
        q, k, v = [t.reshape((groups, 1, d)) for t in (q, k, v)]  # (B*H, 1, D)
        new = F.sum(q * k, axis=-1) * self._scale  # (B*H, 1)
        weights = F.softmax(F.concat(past.reshape((groups, -1)), new, dim=1), axis=-1)  # (B*H, C+1)
        w_past = F.slice_axis(weights, axis=1, begin=0, end=-1)  # (B*H, C)
        w_new = F.slice_axis(weights, axis=1, begin=-1, end=None)  # (B*H, 1)
        out = F.Convolution(values, w_past.expand_dims(2), kernel=(1,), num_filter=groups,
                            num_group=groups, no_bias=True)  # (1, B*H, D)
        out = out.reshape((groups, 1, d)) + F.broadcast_mul(w_new.expand_dims(2), v)  # (B*H, 1, D)
        out = self._out_proj.step(F, out.reshape((rows, self._units)), rows, residual)  # (B, U)
        return out, k.reshape((rows, h, d, 1)), v.reshape((rows, h, 1, d))

    def _heads(self, F, t):
        """(B, T, U) -> (B, H, T, D)"""
        return t.reshape((0, 0, self._num_heads, -1)).transpose((0, 2, 1, 3))


class FeedForward(gluon.HybridBlock):
    def __init__(self, units, hidden, gelu, **kwargs):
        super().__init__(**kwargs)
        self._gelu = gelu
        with self.name_scope():
            self._hidden_map = Linear(hidden, in_units=units, flatten=False)
            self._out_map = Linear(units, in_units=hidden, flatten=False)

    def hybrid_forward(self, F, x):
        return self.full(F, x)

    def full(self, F, x, few_rows=False):
        """x (B, T, U) -> (B, T, U); `few_rows`: see Linear.full."""
        return self._out_map.full(F, self._activation(F, self._hidden_map.full(F, x, few_rows)), few_rows)

    def step(self, F, x, rows, residual=None):
        """x (B, U) -> (B, U) through the step kernels (Linear.step), plus `residual` if given.
        The erf GELU is the first product's own (Linear.step), the tanh form an operator after it."""
        if self._gelu == "erf":
            hidden = self._hidden_map.step(F, x, rows, gelu=True)  # (B, hidden)
        else:
            hidden = self._activation(F, self._hidden_map.step(F, x, rows))  # (B, hidden)
        return self._out_map.step(F, hidden, rows, residual)

    def _activation(self, F, h):
        if self._gelu == "erf":
            return F.LeakyReLU(h, act_type="gelu")  # MXNet's gelu is the exact erf form
        return 0.5 * h * (1 + F.tanh(math.sqrt(2 / math.pi) * (h + 0.044715 * h ** 3)))


class DecoderLayer(gluon.HybridBlock):
    """One pre-LN transformer layer: x + attention(attn_ln(x)), then + ffn(ffn_ln(x)).
    `dropout` (on both residual branches, as GPT-2) only acts under autograd training."""

    def __init__(self, units, num_heads, hidden, gelu, eps, dropout=0.0, **kwargs):
        super().__init__(**kwargs)
        with self.name_scope():
            self.attn_ln = nn.LayerNorm(epsilon=eps, in_channels=units)
            self.attention = SelfAttention(units, num_heads)
            self.ffn_ln = nn.LayerNorm(epsilon=eps, in_channels=units)
            self.ffn = FeedForward(units, hidden, gelu)
            self._drop = nn.Dropout(dropout) if dropout else None

    def full(self, F, x, mask, few_rows=False):
        """x (B, T, U), additive mask (B, T, T) -> x (B, T, U), this layer's keys (B, H, D, T)
        and values (B, H, T, D) (SelfAttention.full; `few_rows`: see Linear.full)."""
        attn, k, v = self.attention.full(F, self.attn_ln(x), mask, few_rows)
        x = x + _dropout(self._drop, attn)
        x = x + _dropout(self._drop, self.ffn.full(F, self.ffn_ln(x), few_rows))
        return x, k, v

    def step(self, F, x, mask, keys, values, rows, slot=None):
        """x (B, U), mask (B, C), this layer's caches as SelfAttention.step takes them ->
        x (B, U), the new token's key (B, H, D, 1) and value (B, H, 1, D) (None where the
        attention operator wrote them into the cache at `slot`)."""
        # The residual adds, done by the products that end each branch where our kernels run.
        x, k, v = self.attention.step(F, self.attn_ln(x), mask, keys, values, rows, slot, residual=x)
        return self.ffn.step(F, self.ffn_ln(x), rows, residual=x), k, v


def _dropout(drop, x):
    """drop(x), or x itself for a network built without dropout."""
    return drop(x) if drop is not None else x


class GPT2Model(gluon.HybridBlock):
    """The KoGPT2 network. Called directly it is the uncached full pass:
    (ids (B, T), positions (B, T), mask (B, T, T)) -> logits (B, T, V).
    `dropout` (embedding and residual, as GPT-2) only acts under autograd training."""

    def __init__(self, config, dropout=0.0, **kwargs):
        super().__init__(**kwargs)
        self.config = config
        units, eps = config.n_embd, config.layer_norm_epsilon
        with self.name_scope():
            self._embed = Lookup(config.vocab_size, units)
            self._pos_embed = Lookup(config.n_positions, units)
            self.layers = nn.HybridSequential()
            for _ in range(config.n_layer):
                self.layers.add(DecoderLayer(units, config.n_head, config.ffn_size, config.gelu, eps, dropout))
            self._final_ln = nn.LayerNorm(epsilon=eps, in_channels=units)
            self._drop = nn.Dropout(dropout) if dropout else None
            # Tied LM head: shares the embedding's weight (V, U), no bias.
            self._logits_proj = Linear(config.vocab_size, in_units=units, use_bias=False,
                                         flatten=False, params=self._embed.params)

    def hybrid_forward(self, F, ids, positions, mask):
        x, _, _ = self.run_full(F, ids, positions, mask)
        return self._logits_proj(x)  # (B, T, V)

    def run_full(self, F, ids, positions, mask, few_rows=False):
        """All positions at once. Returns final hidden states (B, T, U), every layer's keys
        (L, B, H, D, T) and values (L, B, H, T, D). `few_rows`: see Linear.full."""
        x = _dropout(self._drop, self._embed(ids) + self._pos_embed(positions))  # (B, T, U)
        keys, values = [], []
        for layer in self.layers:
            x, k, v = layer.full(F, x, mask, few_rows)  # (B, T, U), (B, H, D, T), (B, H, T, D)
            keys.append(k)
            values.append(v)
        return self._final_ln(x), F.stack(*keys, axis=0), F.stack(*values, axis=0)

    def named_weights(self):
        """{canonical name: Parameter} of the checkpoint's parameters (the tied head included
        under both names, last), in checkpoint order, through the weight table (model/weights.py);
        not the step kernels, which are derived from them."""
        own = structural_parameters(self)
        named = {w.canonical: own[w.network] for w in in_checkpoint_order(weights(self.config.n_layer))}
        named[TIED[1]] = own[TIED[1]]  # the same Parameter as TIED[0]'s
        return named

    def run_step(self, F, ids, positions, mask, caches, rows, slot=None):
        """One token per row. caches: [keys0, values0, keys1, ...] as SelfAttention.step takes
        them. Returns final hidden states (B, U), the new keys (L, B, H, D, 1) and values
        (L, B, H, 1, D), or None for both where the attention operators wrote them into the
        caches at `slot` (`writes_cache`)."""
        x = (self._embed(ids) + self._pos_embed(positions)).reshape((rows, -1))  # (B, U)
        keys, values = [], []
        for layer, layer_keys, layer_values in zip(self.layers, caches[0::2], caches[1::2]):
            x, k, v = layer.step(F, x, mask, layer_keys, layer_values, rows, slot)  # (B, U), (B, H, D, 1), (B, H, 1, D)
            keys.append(k)
            values.append(v)
        if self.writes_cache:
            return self._final_ln(x), None, None
        return self._final_ln(x), F.stack(*keys, axis=0), F.stack(*values, axis=0)

    @property
    def f32_kernels(self):
        """Whether float32 products go through our kernel (`use_f32_kernel_for_steps`)."""
        return self._logits_proj.f32_steps

    @property
    def writes_cache(self):
        """Whether a step's attention writes the new keys and values into the cache itself
        (our attention operator, `use_attention_kernel`)."""
        return self.layers[0].attention.kernel_step


class PrefillGraph(gluon.HybridBlock):
    """(ids (B, T), positions (B, T), mask (B, T, T)) ->
    (last logits (B, V), keys (L, B, H, D, T), values (L, B, H, T, D)).
    Only the last position goes through the LM head: prompts are left-padded, so it is every
    row's last real token. `few_rows`: the graph for prefills of few tokens (Linear.full)."""

    def __init__(self, model, few_rows=False, **kwargs):
        super().__init__(**kwargs)
        self.model = model
        self._few_rows = few_rows

    def hybrid_forward(self, F, ids, positions, mask):
        x, keys, values = self.model.run_full(F, ids, positions, mask, self._few_rows)  # x (B, T, U)
        last = F.squeeze(F.slice_axis(x, axis=1, begin=-1, end=None), axis=1)  # (B, U)
        return self.model._logits_proj.full(F, last, self._few_rows), keys, values


class StepGraph(gluon.HybridBlock):
    """(ids (B, 1), positions (B, 1), mask (B, C), *caches) ->
    (logits (B, V), new keys (L, B, H, D, 1), new values (L, B, H, 1, D)), for one batch size
    B (`rows`): the attention's grouped convolutions fix B in the graph. Where the attention
    operators write the cache themselves (`model.writes_cache`): (ids, positions, mask, slot
    (1,) int32, *caches) -> logits (B, V), the new column written at `slot`."""

    def __init__(self, model, rows, **kwargs):
        super().__init__(**kwargs)
        self.model = model
        self._rows = rows

    def hybrid_forward(self, F, ids, positions, mask, *inputs):
        if self.model.writes_cache:
            x, _, _ = self.model.run_step(F, ids, positions, mask, inputs[1:], self._rows, slot=inputs[0])
            return self.model._logits_proj.step(F, x, self._rows)
        x, keys, values = self.model.run_step(F, ids, positions, mask, inputs, self._rows)
        return self.model._logits_proj.step(F, x, self._rows), keys, values
