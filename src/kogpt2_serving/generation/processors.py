"""Logits processors and sampling warpers, built only for parameters a request sets.

A processor is a callable `(logits (V,), context) -> logits (V,)` over one row, where `context`
is the row's :class:`RowContext` (prompt + generated ids so far). Processors that change
*which* tokens are allowed or how likely they are apply to every strategy (repetition penalty,
no-repeat-ngram, min-new-tokens); warpers (temperature, top-k, top-p, typical-p) apply only to
sampling. Masked tokens get -inf, as in HF transformers, so the semantics match theirs.

To add one: write a small class with `__call__(self, logits, context)`, and add a line to
:func:`build_processors` or :func:`build_warpers` that creates it when its parameter is set.
"""
import numpy as np

NEG_INF = -np.inf


class RowContext:
    """One sequence's ids (prompt + generated), with the n-gram index no-repeat-ngram needs."""

    def __init__(self, prompt_ids, ngram_size=0):
        self.ids = list(prompt_ids)
        self.prompt_len = len(self.ids)
        self.ngram_size = ngram_size
        self.ngrams = {}  # (n-1)-gram -> set of next ids seen after it
        for end in range(ngram_size, len(self.ids) + 1):
            self._index(end)

    @property
    def generated(self):
        return len(self.ids) - self.prompt_len

    def append(self, token_id):
        self.ids.append(int(token_id))
        self._index(len(self.ids))

    def copy(self):
        other = RowContext.__new__(RowContext)
        other.ids, other.prompt_len, other.ngram_size = list(self.ids), self.prompt_len, self.ngram_size
        other.ngrams = {k: set(v) for k, v in self.ngrams.items()}
        return other

    def _index(self, end):
        n = self.ngram_size
        if n and end >= n:
            gram = self.ids[end - n:end]
            self.ngrams.setdefault(tuple(gram[:-1]), set()).add(gram[-1])


class RepetitionPenalty:
    """CTRL-style: every id already in the sequence (prompt included, as in HF) has its logit
    divided by the penalty if positive, multiplied if negative."""

    def __init__(self, penalty):
        self.penalty = penalty

    def __call__(self, logits, context):
        seen = np.unique(np.asarray(context.ids, dtype=np.int64))
        scores = logits[seen]
        logits[seen] = np.where(scores < 0, scores * self.penalty, scores / self.penalty)
        return logits


class NoRepeatNGram:
    """Bans any token that would complete an n-gram already present in the sequence."""

    def __init__(self, size):
        self.size = size

    def __call__(self, logits, context):
        if len(context.ids) >= self.size - 1:
            prefix = tuple(context.ids[len(context.ids) - self.size + 1:]) if self.size > 1 else ()
            banned = context.ngrams.get(prefix)
            if banned:
                logits[list(banned)] = NEG_INF
        return logits


class MinNewTokens:
    """</s> cannot end the sequence before `minimum` tokens were generated."""

    def __init__(self, minimum, eos_id):
        self.minimum, self.eos_id = minimum, eos_id

    def __call__(self, logits, context):
        if context.generated < self.minimum:
            logits[self.eos_id] = NEG_INF
        return logits


class Temperature:
    def __init__(self, temperature):
        self.temperature = temperature

    def __call__(self, logits, context):
        return logits / self.temperature


class TopK:
    """Keeps the k highest logits (and any tied with the k-th), as HF does."""

    def __init__(self, k):
        self.k = k

    def __call__(self, logits, context):
        if self.k >= logits.size:
            return logits
        kth = kth_largest(logits, self.k)
        logits[logits < kth] = NEG_INF
        return logits


def kth_largest(values, k):
    """The k-th largest value, exactly as a partition of the whole array gives it, but with
    the partition over a few candidates: of n // (n // k) >= k blocks, the k largest block
    maxima are k values at least as large as the smallest of them, so every value the answer
    can be is >= that bound (a third of a 16-row step's token choice went to the partition)."""
    n = values.size
    width = n // k
    if width < 16:
        return np.partition(values, n - k)[n - k]
    count = n // width
    maxima = values[:count * width].reshape(count, width).max(axis=1)
    bound = np.partition(maxima, count - k)[count - k]
    candidates = values[values >= bound]
    return np.partition(candidates, candidates.size - k)[candidates.size - k]


class TopP:
    """Nucleus: keeps the smallest set of most likely tokens whose probability reaches p.
    Only the candidates' order is needed, so a partial sort of the likeliest suffices when
    they already hold the mass (usually), with a full sort as the fallback."""

    def __init__(self, p):
        self.p = p

    def __call__(self, logits, context):
        probs = softmax(logits)
        order = _top_order(probs, self.p)
        before = np.cumsum(probs[order]) - probs[order]  # mass of the likelier tokens
        keep = order[: int(np.searchsorted(before, self.p, side="left"))]  # at least the first
        masked = np.full_like(logits, NEG_INF)
        masked[keep] = logits[keep]
        return masked


class TypicalP:
    """Locally typical sampling (Meister et al.), HF's formulation: keep tokens whose
    surprisal is closest to the distribution's entropy until their mass reaches p."""

    def __init__(self, p):
        self.p = p

    def __call__(self, logits, context):
        log_probs = log_softmax(logits)
        probs = np.exp(log_probs)
        finite = np.isfinite(log_probs)
        entropy = -np.sum(log_probs[finite] * probs[finite])
        shifted = np.where(finite, np.abs(-log_probs - entropy), np.inf)
        order = np.argsort(shifted, kind="stable")
        cumulative = np.cumsum(probs[order])
        last = min(int(np.sum(cumulative < self.p)), logits.size - 1)
        masked = np.where(shifted > shifted[order[last]], NEG_INF, logits)
        return masked


def build_processors(params, eos_id):
    """Processors for every strategy, in HF's order; empty when no parameter asks for one."""
    processors = []
    if params.repetition_penalty != 1.0:
        processors.append(RepetitionPenalty(params.repetition_penalty))
    if params.no_repeat_ngram_size:
        processors.append(NoRepeatNGram(params.no_repeat_ngram_size))
    if params.min_new_tokens:
        processors.append(MinNewTokens(params.min_new_tokens, eos_id))
    return processors


def build_warpers(params):
    """Sampling-only warpers, in HF's order: temperature, top-k, top-p, typical-p."""
    warpers = []
    if params.temperature != 1.0:
        warpers.append(Temperature(params.temperature))
    if params.top_k:
        warpers.append(TopK(params.top_k))
    if params.top_p < 1.0:
        warpers.append(TopP(params.top_p))
    if params.typical_p < 1.0:
        warpers.append(TypicalP(params.typical_p))
    return warpers


def apply(callables, logits, context):
    for f in callables:
        logits = f(logits, context)
    return logits


def _top_order(probs, mass, first=256):
    """Indices of the likeliest tokens, most likely first, covering at least `mass`."""
    if probs.size > first:
        part = np.argpartition(-probs, first)[:first]
        order = part[np.argsort(-probs[part], kind="stable")]
        if probs[order].sum() >= mass:
            return order
    return np.argsort(-probs, kind="stable")


def softmax(logits):
    shifted = np.exp(logits - np.max(logits))
    return shifted / shifted.sum()


def log_softmax(logits, axis=-1):
    """Over the last axis by default: (V,) for one row, (T, V) for every position."""
    top = np.max(logits, axis=axis, keepdims=True)
    return logits - top - np.log(np.sum(np.exp(logits - top), axis=axis, keepdims=True))

