"""Perplexity of a token stream under the model and under a unigram baseline.

Both score exactly the same targets: every token of the stream after the first. The model reads
the stream in consecutive windows (positions restart at 0 in each), as it was trained.
"""
import numpy as np

from .processors import log_softmax


def model_nll(engine, ids, window):
    """Mean negative log-likelihood (nats) of ids[1:] and the number of targets."""
    ids = np.asarray(ids, dtype="int32")
    total, count = 0.0, 0
    for start in range(0, len(ids) - 1, window):
        chunk = ids[start:start + window + 1]
        inputs, targets = chunk[:-1], chunk[1:]
        log_probs = log_softmax(engine.full_logits([inputs])[0].astype(np.float64))  # (T, V)
        total -= log_probs[np.arange(len(inputs)), targets].sum()
        count += len(inputs)
    return total / count, count


def unigram_counts(ids, vocab_size):
    return np.bincount(np.asarray(ids), minlength=vocab_size)


def unigram_nll(counts, ids):
    """Mean NLL of ids[1:] under add-one smoothed unigram frequencies."""
    counts = np.asarray(counts, dtype=np.float64)
    probs = (counts + 1) / (counts.sum() + len(counts))
    return float(-np.log(probs[np.asarray(ids[1:])]).mean())
