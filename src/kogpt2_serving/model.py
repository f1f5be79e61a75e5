"""KoGPT2 v1 as a Gluon HybridBlock, plus the two hybridized graphs decoding runs on.

Semantics follow the original model exactly: pre-LN blocks, learned positions, fused qkv
Dense laid out [q | k | v], causal attention scaled by 1/sqrt(head size), GELU (exact erf by
default), final LayerNorm, and an LM head without bias tied to the token embedding.

Attribute names copy GluonNLP's GPT2Model (`_embed`, `_self_attention_layers`, ...) so that
`save_parameters` writes, and `load_parameters` reads, the checkpoint's structural key layout.

Decoding uses two graphs that share the model's parameters:
- `PrefillGraph`: the whole (left-padded) prompt batch in one pass; returns the last
  position's logits and every layer's keys/values for the cache.
- `StepGraph`: one new token per row against a preallocated cache of fixed capacity. The new
  token's key/value is scored separately from the cache (one softmax over both), so the cache
  is only read inside the graph; the engine writes the new column afterwards with one slice
  assignment. Shapes stay fixed for a whole generation, so the graph is built once.
"""
import math

from mxnet import gluon
from mxnet.gluon import nn

MASKED = -1e4  # additive score for masked slots; finite and representable in float16


class SelfAttention(gluon.HybridBlock):
    """Multi-head self-attention with a fused qkv projection."""

    def __init__(self, units, num_heads, **kwargs):
        super().__init__(**kwargs)
        self._units = units
        self._num_heads = num_heads
        self._scale = 1.0 / math.sqrt(units // num_heads)
        with self.name_scope():
            self._multi_head_qkv_proj = nn.Dense(3 * units, in_units=units, flatten=False)
            self._out_proj = nn.Dense(units, in_units=units, flatten=False)

    def full(self, F, x, mask):
        """x (B, T, U), additive mask (B, T, T) -> out (B, T, U), k and v (B, H, T, D)."""
        q, k, v = F.split(self._multi_head_qkv_proj(x), num_outputs=3, axis=-1)  # 3 x (B, T, U)
        q, k, v = [self._heads(F, t) for t in (q, k, v)]  # (B, H, T, D)
        scores = F.batch_dot(q.reshape((-3, -2)), k.reshape((-3, -2)), transpose_b=True)  # (B*H, T, T)
        scores = F.broadcast_add(scores.reshape((-4, -1, self._num_heads, -2)) * self._scale,
                                 mask.expand_dims(1))  # (B, H, T, T)
        weights = F.softmax(scores, axis=-1).reshape((-3, -2))  # (B*H, T, T)
        out = F.batch_dot(weights, v.reshape((-3, -2)))  # (B*H, T, D)
        out = out.reshape((-4, -1, self._num_heads, -2)).transpose((0, 2, 1, 3))  # (B, T, H, D)
        return self._out_proj(out.reshape((0, 0, -1))), k, v

    def step(self, F, x, mask, cache_k, cache_v):
        """One token per row against the cache.

        x (B, 1, U); mask (B, C) additive over cache slots; cache_k/v (B, H, C, D).
        Returns out (B, 1, U) and the new token's k, v (B, H, 1, D).
        """
        h, d = self._num_heads, self._units // self._num_heads
        q, k, v = F.split(self._multi_head_qkv_proj(x), num_outputs=3, axis=-1)  # 3 x (B, 1, U)
        # With one position, (B, 1, H*D) is already laid out as (B*H, 1, D).
        q, k, v = [t.reshape((-1, 1, d)) for t in (q, k, v)]  # (B*H, 1, D)
        past = F.batch_dot(q, cache_k.reshape((-3, -2)), transpose_b=True)  # (B*H, 1, C)
        past = F.broadcast_add(past.reshape((-4, -1, h, -2)) * self._scale,
                               mask.reshape((0, 1, 1, -1)))  # (B, H, 1, C)
        new = F.sum(q * k, axis=-1, keepdims=True) * self._scale  # (B*H, 1, 1)
        weights = F.softmax(F.concat(past.reshape((-3, -2)), new, dim=2), axis=-1)  # (B*H, 1, C+1)
        w_past = F.slice_axis(weights, axis=2, begin=0, end=-1)  # (B*H, 1, C)
        w_new = F.slice_axis(weights, axis=2, begin=-1, end=None)  # (B*H, 1, 1)
        out = F.batch_dot(w_past, cache_v.reshape((-3, -2))) + F.broadcast_mul(w_new, v)  # (B*H, 1, D)
        out = self._out_proj(out.reshape((-1, 1, self._units)))  # (B, 1, U)
        return out, k.reshape((-1, h, 1, d)), v.reshape((-1, h, 1, d))

    def _heads(self, F, t):
        """(B, T, U) -> (B, H, T, D)"""
        return t.reshape((0, 0, self._num_heads, -1)).transpose((0, 2, 1, 3))


class FeedForward(gluon.HybridBlock):
    def __init__(self, units, hidden, gelu, **kwargs):
        super().__init__(**kwargs)
        self._gelu = gelu
        with self.name_scope():
            self._hidden_map = nn.Dense(hidden, in_units=units, flatten=False)
            self._out_map = nn.Dense(units, in_units=hidden, flatten=False)

    def hybrid_forward(self, F, x):
        h = self._hidden_map(x)
        if self._gelu == "erf":
            h = F.LeakyReLU(h, act_type="gelu")  # MXNet's gelu is the exact erf form
        else:
            h = 0.5 * h * (1 + F.tanh(math.sqrt(2 / math.pi) * (h + 0.044715 * h ** 3)))
        return self._out_map(h)


class GPT2Model(gluon.HybridBlock):
    """The KoGPT2 network. Called directly it is the uncached full pass:
    (ids (B, T), positions (B, T), mask (B, T, T)) -> logits (B, T, V).
    `dropout` (embedding and residual, as GPT-2) only acts under autograd training."""

    def __init__(self, config, dropout=0.0, **kwargs):
        super().__init__(**kwargs)
        self.config = config
        units, eps = config.n_embd, config.layer_norm_epsilon
        with self.name_scope():
            self._embed = nn.Embedding(config.vocab_size, units)
            self._pos_embed = nn.Embedding(config.n_positions, units)
            self._self_attention_layers = nn.HybridSequential()
            self._ffn_layers = nn.HybridSequential()
            self._attn_ln = nn.HybridSequential()
            self._ffn_ln = nn.HybridSequential()
            for _ in range(config.n_layer):
                self._self_attention_layers.add(SelfAttention(units, config.n_head))
                self._ffn_layers.add(FeedForward(units, config.ffn_size, config.gelu))
                self._attn_ln.add(nn.LayerNorm(epsilon=eps, in_channels=units))
                self._ffn_ln.add(nn.LayerNorm(epsilon=eps, in_channels=units))
            self._final_ln = nn.LayerNorm(epsilon=eps, in_channels=units)
            self._drop = nn.Dropout(dropout) if dropout else None
            # Tied LM head: shares the embedding's weight (V, U), no bias.
            self._logits_proj = nn.Dense(config.vocab_size, in_units=units, use_bias=False,
                                         flatten=False, params=self._embed.params)

    def hybrid_forward(self, F, ids, positions, mask):
        x, _ = self.run_full(F, ids, positions, mask)
        return self._logits_proj(x)  # (B, T, V)

    def run_full(self, F, ids, positions, mask):
        """All positions at once. Returns final hidden states (B, T, U) and the
        keys/values stacked as (2L, B, H, T, D): k0, v0, k1, v1, ..."""
        x = self._maybe_drop(self._embed(ids) + self._pos_embed(positions))  # (B, T, U)
        kv = []
        for i in range(self.config.n_layer):
            attn, k, v = self._self_attention_layers[i].full(F, self._attn_ln[i](x), mask)
            x = x + self._maybe_drop(attn)
            x = x + self._maybe_drop(self._ffn_layers[i](self._ffn_ln[i](x)))
            kv += [k, v]
        return self._final_ln(x), F.stack(*kv, axis=0)  # (2L, B, H, T, D)

    def _maybe_drop(self, x):
        return self._drop(x) if self._drop is not None else x

    def run_step(self, F, ids, positions, mask, caches):
        """One token per row. caches: [k0, v0, k1, v1, ...], each (B, H, C, D).
        Returns final hidden states (B, U) and the new keys/values (2L, B, H, 1, D)."""
        x = self._embed(ids) + self._pos_embed(positions)  # (B, 1, U)
        kv = []
        for i in range(self.config.n_layer):
            attn, k, v = self._self_attention_layers[i].step(
                F, self._attn_ln[i](x), mask, caches[2 * i], caches[2 * i + 1])
            x = x + attn
            x = x + self._ffn_layers[i](self._ffn_ln[i](x))
            kv += [k, v]
        return self._final_ln(x).reshape((0, -1)), F.stack(*kv, axis=0)  # (2L, B, H, 1, D)


class PrefillGraph(gluon.HybridBlock):
    """(ids (B, T), positions (B, T), mask (B, T, T)) -> (last logits (B, V), kv (2L, B, H, T, D)).
    Only the last position goes through the LM head: prompts are left-padded, so it is every
    row's last real token."""

    def __init__(self, model, **kwargs):
        super().__init__(**kwargs)
        self.model = model

    def hybrid_forward(self, F, ids, positions, mask):
        x, kv = self.model.run_full(F, ids, positions, mask)  # (B, T, U)
        last = F.squeeze(F.slice_axis(x, axis=1, begin=-1, end=None), axis=1)  # (B, U)
        return self.model._logits_proj(last), kv


class StepGraph(gluon.HybridBlock):
    """(ids (B, 1), positions (B, 1), mask (B, C), *caches) -> (logits (B, V), kv (2L, B, H, 1, D))."""

    def __init__(self, model, **kwargs):
        super().__init__(**kwargs)
        self.model = model

    def hybrid_forward(self, F, ids, positions, mask, *caches):
        x, kv = self.model.run_step(F, ids, positions, mask, caches)
        return self.model._logits_proj(x), kv
