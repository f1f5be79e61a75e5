"""The decode engine: prefill a batch of prompts once, then one token per row per step.

The KV cache is two preallocated arrays per generation, keys (L, B, H, D, C) (each head's keys
transposed, as the attention reads them) and values (L, B, H, C, D), with capacity C rounded up
to a multiple of cache.CACHE_BUCKET so that requests of similar length reuse the same hybridized
graph. A step reads the cache through per-layer views (no copies) and writes the new column
back with one slice assignment per array, so its cost does not grow with a re-copied cache.

Prompts of different lengths are left-padded: every row writes its next token into the same
cache slot, pad slots are masked out, and each row's positions start at 0 at its first real
token, so a row's result does not depend on what it is batched with.

After BIND_AFTER steps over the same arrays, a state's steps run the step graph bound to them
(compat.BoundGraph): MXNet then runs the whole step as one engine operation instead of ~26.

Logits leave the device as float32 NumPy (B, V) once per step; token choice happens on the
host (see :mod:`kogpt2_serving.generation`).
"""
import warnings
from typing import List, NamedTuple

import numpy as np

from ..errors import PromptTooLong
from .cache import capacity_for
from .compat import GraphCall, slice_assign, slice_fill
from .network import MASKED, PrefillGraph, StepGraph, fill_step_weights

# Prefills of at most this many tokens (rows x longest prompt) run their products through our
# float32 kernel where the steps do (Linear.full): twice as fast as oneDNN's FullyConnected at
# 12-32 tokens, even at 64, slower beyond (benchmarks/kernels.py).
FEW_PREFILL_TOKENS = 64
MAX_STEP_GRAPHS = 32  # step graphs kept (one per batch size seen; beam search shrinks batches)
# Steps over the same arrays before the step graph is bound to them (Engine._run_step). Binding
# costs about one step's time at KoGPT2 size (a CachedOp and its set-up); an int8 step at one row
# then takes 4% less (float32 1%), measured interleaved in one process.
BIND_AFTER = 2
SPARE_CACHE_ARRAYS = 2  # retired cache arrays kept for the next batch (a keys and a values array)


class Prefill(NamedTuple):
    """Prompts after one pass, left-padded to the longest (`width` slots)."""

    logits: np.ndarray  # (n, V) float32: each row's next-token scores
    keys: object  # (L, n, H, D, T) NDArray
    values: object  # (L, n, H, T, D) NDArray
    pads: np.ndarray  # (n,) left padding per row
    lengths: List[int]  # prompt lengths

    @property
    def width(self):
        return int(self.values.shape[3])


class StepBinding:
    """A state's step inputs for one row count: how many steps ran over them in a row, and the
    step graph bound to them (None until Engine._run_step binds it)."""

    def __init__(self, inputs):
        self.inputs = inputs
        self.calls = 0
        self.graph = None

    def takes(self, inputs):
        return len(inputs) == len(self.inputs) and all(a is b for a, b in zip(inputs, self.inputs))


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
        self._slot = None  # (1,) int32 NDArray holding `length`, for the attention operator
        self._slot_value = None  # the length it holds
        self.bound_steps = {}  # rows -> StepBinding: the step graph bound to this state's arrays

    @property
    def batch_size(self):
        return self.values.shape[1]

    @property
    def capacity(self):
        return self.values.shape[3]

    def step_views(self, rows):
        """(positions, mask, [keys0, values0, keys1, ...]) of the first `rows` rows, sharing the
        state's memory: the caches as (1, rows*H*D, C) and (1, rows*H*C, D) (flattened here,
        outside the step graph, where a reshape is free; a prefix of rows is contiguous in every
        layer). The same NDArrays on every call until the state's arrays change (`reorder`)."""
        if self._views is None:
            self._views = {}
        if rows not in self._views:
            caches = []
            for keys, values in zip(self.keys, self.values):
                keys, values = keys[:rows], values[:rows]
                caches += [keys.reshape((1, -1, self.capacity)), values.reshape((1, -1, keys.shape[2]))]
            self._views[rows] = (self.positions[:rows], self.mask[:rows], caches)
        return self._views[rows]

    def slot(self):
        """`length` as a (1,) int32 NDArray: the slot the next step writes the new column into."""
        import mxnet as mx

        if self._slot is None:
            self._slot = mx.nd.zeros((1,), ctx=self.mask.context, dtype="int32")
        if self._slot_value != self.length:
            self._slot._sync_copyfrom(np.array([self.length], dtype=np.int32))
            self._slot_value = self.length
        return self._slot

    def advance(self):
        """One more slot filled: `length` and its array move on (the array by an operator queued
        after the step that reads it)."""
        if self._slot is not None and self._slot_value == self.length:
            self._slot += 1
            self._slot_value += 1
        self.length += 1

    def reorder(self, rows):
        """Keep/duplicate/reorder batch rows (beam search, dropping finished rows)."""
        import mxnet as mx

        index = mx.nd.array(rows, ctx=self.values.context, dtype="int32")
        self.keys = take_rows(self.keys, index)
        self.values = take_rows(self.values, index)
        self.mask = self.mask.take(index, axis=0)
        self.positions = self.positions.take(index, axis=0)
        self.pads = self.pads[np.asarray(rows)]
        self._views = None
        self.bound_steps.clear()


def take_rows(cache, index):
    """cache (L, B, ...) -> (L, len(index), ...): rows by index, layer by layer. take() along
    axis 1 of the 5-D cache is a slow kernel (~10x below memory speed on CPU); along axis 0 of
    one layer it is a plain gather."""
    import mxnet as mx

    return mx.nd.stack(*[cache[layer].take(index, axis=0) for layer in range(cache.shape[0])], axis=0)


class Engine:
    """Runs one model on one device. Not thread-safe: one generation at a time."""

    def __init__(self, model, ctx, dtype="float32"):
        self.model = model
        self.config = model.config
        self.ctx = ctx
        self.dtype = dtype
        self._prefill = GraphCall(PrefillGraph(model))
        self._prefill_few = GraphCall(PrefillGraph(model, few_rows=True)) if model.f32_kernels else None
        self._steps = {}  # batch size -> GraphCall of its StepGraph
        self._ids = {}  # batch size -> (B, 1) int32 NDArray the step's tokens are copied into
        self._spare = []  # flat cache arrays of retired states (retire), smallest first
        fill_step_weights(model)
        # Prompt shapes vary per request; step shapes are fixed for a whole generation.
        for prefill in (self._prefill, self._prefill_few):
            if prefill is not None:
                prefill.block.hybridize(static_alloc=True)
        model.hybridize(static_alloc=True)

    @property
    def max_positions(self):
        return self.config.n_positions

    def check_length(self, prompt_len, max_new_tokens):
        PromptTooLong.check(prompt_len, max_new_tokens, self.max_positions)

    def start(self, prompts, max_new_tokens):
        """Prefill prompts (lists of ids, each non-empty) -> (state, next-token logits (B, V)).
        max_new_tokens: one int for all rows, or one per row."""
        budgets = max_new_tokens if isinstance(max_new_tokens, (list, tuple)) else [max_new_tokens] * len(prompts)
        for prompt, budget in zip(prompts, budgets):
            self.check_length(len(prompt), budget)
        prefill = self.prefill(prompts)
        # Slots: the padded prompt plus every fed-back token (the last one is never fed).
        state = self.allocate(len(prompts), capacity_for(prefill.width, max(budgets) - 1))
        self.insert(state, list(range(len(prompts))), prefill)
        return state, prefill.logits

    def prefill(self, prompts):
        """Prompts (lists of ids) left-padded to the longest, in one pass -> Prefill: the next-token
        logits and every layer's keys/values, for `insert` into a state."""
        lengths = [len(p) for p in prompts]
        longest = max(lengths)
        pads = np.array([longest - n for n in lengths])
        ids = np.zeros((len(prompts), longest), dtype="int32")
        for row, (prompt, pad) in enumerate(zip(prompts, pads)):
            ids[row, pad:] = prompt
        slots = np.arange(longest)
        positions = np.maximum(slots[None, :] - pads[:, None], 0)  # (B, T)
        valid = slots[None, :] >= pads[:, None]  # (B, T)
        causal = slots[:, None] >= slots[None, :]  # (T, T)
        mask = np.where(valid[:, None, :] & causal[None], 0.0, MASKED)  # (B, T, T)
        few = self._prefill_few is not None and ids.size <= FEW_PREFILL_TOKENS
        graph = self._prefill_few if few else self._prefill
        logits, keys, values = _run(graph, self._nd(ids, "int32"), self._nd(positions, "int32"), self._nd(mask))
        return Prefill(self._host(logits), keys, values, pads, lengths)

    def allocate(self, rows, capacity):
        """An empty state: `rows` free rows (every slot masked) of `capacity` slots, zeroed or
        holding what a retired state's cache held (finite values that masked slots never weigh)."""
        import mxnet as mx

        c = self.config
        heads, head_size = c.n_head, c.n_embd // c.n_head
        keys = self._cache_array((c.n_layer, rows, heads, head_size, capacity))
        values = self._cache_array((c.n_layer, rows, heads, capacity, head_size))
        mask = mx.nd.full((rows, capacity), MASKED, ctx=self.ctx, dtype=self.dtype)
        positions = mx.nd.zeros((rows, 1), ctx=self.ctx, dtype="int32")
        return DecodeState(keys, values, mask, positions, np.zeros(rows, dtype=np.int64), 0)

    def retire(self, state):
        """The caller is done with `state`: its cache arrays serve the next `allocate` (a fresh
        array of a few hundred MB costs 0.1-0.2 s of page faults on a CPU, measured at KoGPT2
        size; reused, nothing). Keeps the largest few."""
        for array in (state.keys, state.values):
            self._spare.append(array.reshape((-1,)))
        self._spare = sorted(self._spare, key=lambda a: a.size)[-SPARE_CACHE_ARRAYS:]
        state.keys = state.values = None
        state.bound_steps.clear()  # its bound graphs hold views of the arrays now spare

    def _cache_array(self, shape):
        """A cache array of `shape`: the smallest spare one that holds it (a view), else zeros."""
        import mxnet as mx

        size = int(np.prod(shape))
        for i, spare in enumerate(self._spare):
            if spare.size >= size:
                del self._spare[i]
                return spare[:size].reshape(shape)
        return mx.nd.zeros(shape, ctx=self.ctx, dtype=self.dtype)

    def insert(self, state, targets, prefill, sources=None):
        """Put prefilled rows into rows `targets` of `state` (free rows: whatever they held is
        overwritten or masked), so that they decode with the rows already there.

        Every row writes its next token into one shared slot, `state.length`. A prefill of T
        slots goes to [length - T, length); when T is longer than what the state holds, the
        length first jumps to T: rows already there get a gap of empty, masked slots, which
        changes nothing they compute (a masked slot's attention weight is exactly 0). The
        caller sees to it that length + every row's remaining tokens fits the capacity.
        `sources`: which prefill rows go to `targets` (default: all, in order)."""
        sources = list(range(len(targets))) if sources is None else list(sources)
        width = prefill.width
        state.length = max(state.length, width)
        end, begin = state.length, state.length - width
        if end > state.capacity:
            raise RuntimeError("KV cache full: a prefill of {} slots does not fit {}".format(width, state.capacity))
        for target, i in zip(targets, sources):  # a few small copies per row
            pad = int(prefill.pads[i])
            state.keys[:, target:target + 1, :, :, begin:end] = prefill.keys[:, i:i + 1]
            state.values[:, target:target + 1, :, begin:end, :] = prefill.values[:, i:i + 1]
            mask = np.full(state.capacity, MASKED)
            mask[begin + pad:end] = 0
            state.mask[target] = self._nd(mask)
            state.positions[target] = prefill.lengths[i]
            state.pads[target] = begin + pad

    def resize(self, state, keep, rows, capacity):
        """A new state of `rows` rows and `capacity` slots holding the state's rows `keep` (first,
        in that order; the rest free), shifted left so that the earliest slot a kept row uses
        becomes slot 0 (TGI's filter and concatenate)."""
        import mxnet as mx

        new = self.allocate(rows, capacity)
        if not keep:
            return new
        start = int(state.pads[np.asarray(keep)].min())
        span, n = state.length - start, len(keep)
        if list(keep) == list(range(n)):  # the first rows (the continuous batcher's): no gather
            new.keys[:, :n, :, :, :span] = state.keys[:, :n, :, :, start:state.length]
            new.values[:, :n, :, :span, :] = state.values[:, :n, :, start:state.length, :]
            new.mask[:n, :span] = state.mask[:n, start:state.length]
            new.positions[:n] = state.positions[:n]
        else:
            index = mx.nd.array(keep, ctx=self.ctx, dtype="int32")
            new.keys[:, :n, :, :, :span] = take_rows(state.keys, index)[:, :, :, :, start:state.length]
            new.values[:, :n, :, :span, :] = take_rows(state.values, index)[:, :, :, start:state.length, :]
            new.mask[:n, :span] = state.mask.take(index, axis=0)[:, start:state.length]
            new.positions[:n] = state.positions.take(index, axis=0)
        new.pads[:n] = state.pads[np.asarray(keep)] - start
        new.length = span
        return new

    def step(self, state, tokens):
        """Feed one token to each of the first n = len(tokens) rows -> their next-token logits
        (n, V). A step costs what its n rows cost, so the continuous batcher keeps its live rows
        first (`move_row`) and steps only those; rows past n do not move on (a new row's
        `insert` sets all of its slots)."""
        if state.length >= state.capacity:
            raise RuntimeError("KV cache full: {} slots".format(state.capacity))
        rows = len(tokens)
        if not 0 < rows <= state.batch_size:
            raise ValueError("a step feeds 1 to {} rows, got {} tokens".format(state.batch_size, rows))
        ids = self._step_ids(tokens)
        positions, mask, caches = state.step_views(rows)
        t = state.length
        # The writes as single operators (NDArray's slice syntax costs ~60 us of Python each).
        if self.model.writes_cache:  # the attention operators write the new column at the slot
            logits = self._run_step(state, [ids, positions, mask, state.slot()] + caches)
        else:
            logits, new_keys, new_values = self._run_step(state, [ids, positions, mask] + caches)
            slice_assign(state.keys, new_keys, (0, 0, 0, 0, t), (None, rows, None, None, t + 1))
            slice_assign(state.values, new_values, (0, 0, 0, t, 0), (None, rows, None, t + 1, None))
        slice_fill(state.mask, 0, (0, t), (rows, t + 1))
        positions += 1  # a view of the first rows' positions: in place
        state.advance()
        return self._host(logits)

    def _run_step(self, state, inputs):
        """The step graph of len(inputs[0]) rows over `inputs`, bound to them once the same
        arrays have come BIND_AFTER times in a row (compat.BoundGraph: one engine operation per
        step instead of ~26; the binding lives, and keeps the arrays, as long as the state)."""
        rows = inputs[0].shape[0]
        graph = self._step_graph(rows)
        binding = state.bound_steps.get(rows)
        if binding is None or not binding.takes(inputs):
            binding = state.bound_steps[rows] = StepBinding(inputs)
        if binding.graph is None and binding.calls >= BIND_AFTER and graph.built:
            binding.graph = graph.bind(*inputs)
        binding.calls += 1
        return binding.graph() if binding.graph is not None else _run(graph, *inputs)

    def _step_ids(self, tokens):
        """(B, 1) int32 NDArray of the tokens, in a buffer kept per batch size (a new NDArray from
        NumPy costs twice the copy into one)."""
        import mxnet as mx

        rows = len(tokens)
        ids = self._ids.get(rows)
        if ids is None:
            ids = self._ids[rows] = mx.nd.zeros((rows, 1), ctx=self.ctx, dtype="int32")
        ids._sync_copyfrom(np.asarray(tokens, dtype=np.int32).reshape(rows, 1))
        return ids

    def move_row(self, state, source, target):
        """Row `source` of the state into row `target` (whatever that held is overwritten): a
        finished row's place taken by a live one, so that the live rows stay first."""
        for layer in range(state.keys.shape[0]):  # contiguous rows; ~4x faster than state.keys[:, target]
            state.keys[layer][target] = state.keys[layer][source]
            state.values[layer][target] = state.values[layer][source]
        state.mask[target] = state.mask[source]
        state.positions[target] = state.positions[source]
        state.pads[target] = state.pads[source]

    def _step_graph(self, rows):
        graph = self._steps.get(rows)
        if graph is None:
            if len(self._steps) >= MAX_STEP_GRAPHS:
                self._steps.pop(next(iter(self._steps)))  # the oldest batch size
            graph = self._steps[rows] = GraphCall(StepGraph(self.model, rows))
            graph.block.hybridize(static_alloc=True, static_shape=True)
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
    if getattr(graph, "built", False):
        return graph(*inputs)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Parameter .* is not used by any computation")
        return graph(*inputs)
