"""The decode engine: prefill a batch of prompts once, then one token per row per step.

The KV cache is two preallocated arrays per generation, keys (L, B, H, D, C) (each head's keys
transposed, as the attention reads them) and values (L, B, H, C, D), with capacity C rounded up
to a multiple of cache.CACHE_BUCKET so that requests of similar length reuse the same hybridized
graph. A step reads the cache through per-layer views (no copies) and writes the new column
back with one slice assignment per array, so its cost does not grow with a re-copied cache.

Prompts of different lengths are left-padded: every row writes its next token into the same
cache slot, pad slots are masked out, and each row's positions start at 0 at its first real
token, so a row's result does not depend on what it is batched with.

Logits leave the device as float32 NumPy (B, V) once per step; token choice happens on the
host (see :mod:`kogpt2_serving.generation`).
"""
import warnings

import numpy as np

from ..errors import PromptTooLong
from .cache import capacity_for
from .network import MASKED, PrefillGraph, StepGraph, fill_step_weights
MAX_STEP_GRAPHS = 32  # step graphs kept (one per batch size seen; beam search shrinks batches)


class DecodeState:
    """The cache and per-row bookkeeping of one batch being decoded."""

    def __init__(self, keys, values, mask, positions, pads, length):
        self.keys = keys  # (L, B, H, D, C)
        self.values = values  # (L, B, H, C, D)
        self.mask = mask  # (B, C) additive: 0 where a slot holds a real token of that row
        self.positions = positions  # (B, 1) int32: position id of the next token
        self.pads = pads  # (B,) left padding per row
        self.length = length  # slots filled so far (same for all rows)
        self._views = None

    @property
    def batch_size(self):
        return self.values.shape[1]

    @property
    def capacity(self):
        return self.values.shape[3]

    def layer_views(self):
        """[keys0, values0, keys1, ...] as (1, B*H*D, C) and (1, B*H*C, D), sharing the caches'
        memory (flattened here, outside the step graph, where a reshape is free)."""
        if self._views is None:
            self._views = []
            for keys, values in zip(self.keys, self.values):
                self._views += [keys.reshape((1, -1, self.capacity)), values.reshape((1, -1, keys.shape[2]))]
        return self._views

    def reorder(self, rows):
        """Keep/duplicate/reorder batch rows (beam search, dropping finished rows)."""
        import mxnet as mx

        index = mx.nd.array(rows, ctx=self.values.context, dtype="int32")
        self.keys = self.keys.take(index, axis=1)
        self.values = self.values.take(index, axis=1)
        self.mask = self.mask.take(index, axis=0)
        self.positions = self.positions.take(index, axis=0)
        self.pads = self.pads[np.asarray(rows)]
        self._views = None


class Engine:
    """Runs one model on one device. Not thread-safe: one generation at a time."""

    def __init__(self, model, ctx, dtype="float32"):
        self.model = model
        self.config = model.config
        self.ctx = ctx
        self.dtype = dtype
        self._prefill = PrefillGraph(model)
        self._steps = {}  # batch size -> StepGraph
        fill_step_weights(model)
        # Prompt shapes vary per request; step shapes are fixed for a whole generation.
        self._prefill.hybridize(static_alloc=True)
        model.hybridize(static_alloc=True)

    @property
    def max_positions(self):
        return self.config.n_positions

    def check_length(self, prompt_len, max_new_tokens):
        PromptTooLong.check(prompt_len, max_new_tokens, self.max_positions)

    def start(self, prompts, max_new_tokens):
        """Prefill prompts (lists of ids, each non-empty) -> (state, next-token logits (B, V)).
        max_new_tokens: one int for all rows, or one per row."""
        import mxnet as mx

        lengths = [len(p) for p in prompts]
        budgets = max_new_tokens if isinstance(max_new_tokens, (list, tuple)) else [max_new_tokens] * len(prompts)
        for length, budget in zip(lengths, budgets):
            self.check_length(length, budget)
        longest = max(lengths)
        # Slots: the padded prompt plus every fed-back token (the last one is never fed).
        capacity = capacity_for(longest, max(budgets) - 1)
        pads = np.array([longest - n for n in lengths])
        ids = np.zeros((len(prompts), longest), dtype="int32")
        for row, (prompt, pad) in enumerate(zip(prompts, pads)):
            ids[row, pad:] = prompt
        slots = np.arange(longest)
        positions = np.maximum(slots[None, :] - pads[:, None], 0)  # (B, T)
        valid = slots[None, :] >= pads[:, None]  # (B, T)
        causal = slots[:, None] >= slots[None, :]  # (T, T)
        mask = np.where(valid[:, None, :] & causal[None], 0.0, MASKED)  # (B, T, T)

        logits, new_keys, new_values = _run(
            self._prefill, self._nd(ids, "int32"), self._nd(positions, "int32"), self._nd(mask))
        layers, batch, heads, _, head_size = new_values.shape
        keys = mx.nd.zeros((layers, batch, heads, head_size, capacity), ctx=self.ctx, dtype=self.dtype)
        values = mx.nd.zeros((layers, batch, heads, capacity, head_size), ctx=self.ctx, dtype=self.dtype)
        keys[:, :, :, :, :longest] = new_keys
        values[:, :, :, :longest, :] = new_values
        cache_mask = np.full((batch, capacity), MASKED)
        cache_mask[:, :longest] = np.where(valid, 0.0, MASKED)
        state = DecodeState(keys, values, self._nd(cache_mask), self._nd(np.array(lengths)[:, None], "int32"),
                            pads, longest)
        return state, self._host(logits)

    def step(self, state, tokens):
        """Feed one token per row (B,) -> next-token logits (B, V)."""
        if state.length >= state.capacity:
            raise RuntimeError("KV cache full: {} slots".format(state.capacity))
        ids = self._nd(np.asarray(tokens).reshape(-1, 1), "int32")
        step = self._step_graph(state.batch_size)
        logits, new_keys, new_values = _run(step, ids, state.positions, state.mask, *state.layer_views())
        t = state.length
        state.keys[:, :, :, :, t:t + 1] = new_keys
        state.values[:, :, :, t:t + 1, :] = new_values
        state.mask[:, t:t + 1] = 0
        state.positions += 1
        state.length += 1
        return self._host(logits)

    def merge(self, parts, future_slots):
        """One batch from rows of several states -> a new DecodeState (TGI's concatenate and
        filter in one copy). parts: [(state, rows)], `rows` the state rows to keep, in order;
        the result holds them part after part. future_slots: how many more tokens any kept row
        will feed (the capacity is the joined length plus that, rounded to CACHE_BUCKET).

        Every row keeps writing into one shared slot: a part whose filled span is shorter than
        the longest is placed to end at the same slot, its rows padded on the left. Slots no
        kept row uses (leading pads of every kept row) are dropped, so a long-finished row does
        not leave its length behind."""
        import mxnet as mx

        spans = []  # (state, rows, first slot used by a kept row)
        for state, rows in parts:
            if rows:
                spans.append((state, list(rows), int(state.pads[np.asarray(rows)].min())))
        length = max(state.length - start for state, _, start in spans)
        capacity = capacity_for(length, future_slots)
        first = spans[0][0]
        layers, _, heads, head_size, _ = first.keys.shape
        batch = sum(len(rows) for _, rows, _ in spans)
        keys = mx.nd.zeros((layers, batch, heads, head_size, capacity), ctx=self.ctx, dtype=self.dtype)
        values = mx.nd.zeros((layers, batch, heads, capacity, head_size), ctx=self.ctx, dtype=self.dtype)
        mask = mx.nd.full((batch, capacity), MASKED, ctx=self.ctx, dtype=self.dtype)
        positions, pads, offset = [], [], 0
        for state, rows, start in spans:
            index = mx.nd.array(rows, ctx=self.ctx, dtype="int32")
            n, span = len(rows), state.length - start
            shift = length - span  # where this part's first used slot lands
            keys[:, offset:offset + n, :, :, shift:length] = \
                state.keys.take(index, axis=1)[:, :, :, :, start:state.length]
            values[:, offset:offset + n, :, shift:length, :] = \
                state.values.take(index, axis=1)[:, :, :, start:state.length, :]
            mask[offset:offset + n, shift:length] = state.mask.take(index, axis=0)[:, start:state.length]
            positions.append(state.positions.take(index, axis=0))
            pads.append(state.pads[np.asarray(rows)] - start + shift)
            offset += n
        return DecodeState(keys, values, mask, mx.nd.concat(*positions, dim=0), np.concatenate(pads), length)

    def _step_graph(self, rows):
        graph = self._steps.get(rows)
        if graph is None:
            if len(self._steps) >= MAX_STEP_GRAPHS:
                self._steps.pop(next(iter(self._steps)))  # the oldest batch size
            graph = self._steps[rows] = StepGraph(self.model, rows)
            graph.hybridize(static_alloc=True, static_shape=True)
        return graph

    def full_logits(self, ids):
        """Uncached pass over equal-length rows (B, T) -> logits of every position (B, T, V).
        What the 2020 handler ran once per generated token; kept as a reference."""
        ids = np.asarray(ids, dtype="int32")
        batch, length = ids.shape
        positions = np.broadcast_to(np.arange(length), (batch, length))
        causal = np.arange(length)[:, None] >= np.arange(length)[None, :]
        mask = np.broadcast_to(np.where(causal, 0.0, MASKED), (batch, length, length))
        return self._host(_run(self.model, self._nd(ids, "int32"), self._nd(positions, "int32"), self._nd(mask)))

    def _nd(self, array, dtype=None):
        import mxnet as mx

        return mx.nd.array(array, ctx=self.ctx, dtype=dtype or self.dtype)

    @staticmethod
    def _host(logits):
        return logits.astype("float32", copy=False).asnumpy()


def _run(graph, *inputs):
    """Call a graph. Steps use the step kernels and not the weights they were copied from,
    full passes the other way round; Gluon warns about the unused copy when it builds a graph."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Parameter .* is not used by any computation")
        return graph(*inputs)
