"""Logits processors and warpers on hand-built logits, with exact expectations: inputs exactly
representable in binary where the arithmetic must be exact (penalties, temperature), and a margin on
both sides of every cut point that depends on rounded sums (top-p, typical-p)."""
import numpy as np
import pytest

from kogpt2_serving.generation import processors as P
from kogpt2_serving.generation.params import parse_parameters

INF = np.inf


def ctx(ids, n=0, prompt_len=None):
    c = P.RowContext(ids[:prompt_len] if prompt_len is not None else ids, n)
    for token in ids[len(c.ids):]:
        c.append(token)
    return c


def test_top_k_on_a_ramp():
    logits = np.arange(10, dtype=float)  # 0..9
    out = P.TopK(3)(logits.copy(), ctx([]))
    assert list(out) == [-INF] * 7 + [7.0, 8.0, 9.0]


def test_top_k_keeps_ties_and_large_k():
    out = P.TopK(2)(np.array([1.0, 5.0, 3.0, 5.0, 3.0]), ctx([]))
    assert list(out) == [-INF, 5.0, -INF, 5.0, -INF]
    out = P.TopK(2)(np.array([1.0, 5.0, 3.0, 4.0, 3.0]), ctx([]))
    assert list(out) == [-INF, 5.0, -INF, 4.0, -INF]
    assert list(P.TopK(10)(np.array([1.0, 2.0]), ctx([]))) == [1.0, 2.0]


# The cumulative masses 0.5, 0.8 and 0.95 come out of log -> softmax -> cumsum only to within a
# few float64 ulps (how exp and log round is libm's, and differs between CPUs), so no p sits on
# one: each boundary is tested on both sides with a margin far above that rounding.
@pytest.mark.parametrize("p,kept", [
    (0.49, [0]),  # 0.5 alone reaches 0.49
    (0.51, [0, 1]),
    (0.79, [0, 1]),  # 0.5 + 0.3 reaches 0.79
    (0.81, [0, 1, 2]),
    (0.94, [0, 1, 2]),
    (0.96, [0, 1, 2, 3]),
    (1.0, [0, 1, 2, 3]),
    (0.01, [0]),  # always at least the most likely
])
def test_top_p_cut_points(p, kept):
    probs = np.array([0.5, 0.3, 0.15, 0.05])
    out = P.TopP(p)(np.log(probs), ctx([]))
    assert [i for i in range(4) if np.isfinite(out[i])] == kept
    assert np.allclose(out[kept], np.log(probs[kept]))


def test_top_p_large_vocab_partial_sort_matches_full_sort():
    rng = np.random.RandomState(0)
    for p, scale in [(0.95, 3.0), (0.9, 0.01)]:  # peaked (partial sort) and flat (full-sort fallback)
        logits = rng.standard_normal(5000) * scale
        out = P.TopP(p)(logits.copy(), ctx([]))
        probs = P.softmax(logits)
        order = np.argsort(-probs)
        count = int(np.searchsorted(np.cumsum(probs[order]), p) + 1)
        assert set(np.flatnonzero(np.isfinite(out))) == set(order[:count])


def test_temperature():
    out = P.Temperature(0.5)(np.array([1.0, -2.0, 0.0]), ctx([]))
    assert list(out) == [2.0, -4.0, 0.0]


def test_typical_p():
    # entropy of [0.5, 0.3, 0.2] is ~1.03 nats; surprisals 0.69, 1.20, 1.61 -> distances .34, .17, .58
    # in that order the masses are 0.3, 0.8, 1.0 (to within rounding): each p keeps a margin from them
    probs = np.array([0.5, 0.3, 0.2])
    out = P.TypicalP(0.29)(np.log(probs), ctx([]))
    assert [bool(np.isfinite(x)) for x in out] == [False, True, False]  # 0.3 alone reaches mass 0.29
    out = P.TypicalP(0.31)(np.log(probs), ctx([]))
    assert [bool(np.isfinite(x)) for x in out] == [True, True, False]
    out = P.TypicalP(0.7)(np.log(probs), ctx([]))
    assert [bool(np.isfinite(x)) for x in out] == [True, True, False]
    out = P.TypicalP(0.81)(np.log(probs), ctx([]))
    assert [bool(np.isfinite(x)) for x in out] == [True, True, True]


def test_repetition_penalty_on_seen_ids():
    logits = np.array([2.0, -2.0, 1.0, -1.0, 4.0])
    out = P.RepetitionPenalty(2.0)(logits.copy(), ctx([0, 1, 1], prompt_len=1))
    assert list(out) == [1.0, -4.0, 1.0, -1.0, 4.0]  # positive halved, negative doubled, unseen kept


def test_no_repeat_ngram_bans():
    # sequence 5 6 7 5 6 : the bigram (6, 7) exists, so after "... 6" token 7 is banned for n=2;
    # for n=3, (5, 6) -> 7 exists, and the sequence ends with 5 6, so 7 is banned.
    seq = [5, 6, 7, 5, 6]
    for n, banned in [(2, {7}), (3, {7}), (4, set())]:
        out = P.NoRepeatNGram(n)(np.zeros(10), ctx(seq, n, prompt_len=2))
        assert set(np.flatnonzero(np.isinf(out))) == banned
    # n=1 bans every id already present
    out = P.NoRepeatNGram(1)(np.zeros(10), ctx(seq, 1))
    assert set(np.flatnonzero(np.isinf(out))) == {5, 6, 7}


def test_no_repeat_ngram_two_continuations():
    out = P.NoRepeatNGram(2)(np.zeros(10), ctx([1, 2, 1, 3, 1], 2))
    assert set(np.flatnonzero(np.isinf(out))) == {2, 3}


def test_min_new_tokens_suppresses_eos():
    proc = P.MinNewTokens(2, eos_id=3)
    c = ctx([9, 9], prompt_len=2)
    assert np.isinf(proc(np.zeros(5), c)[3])
    c.append(4)
    assert np.isinf(proc(np.zeros(5), c)[3])
    c.append(4)
    assert proc(np.zeros(5), c)[3] == 0.0


def test_processors_built_only_when_asked():
    assert P.build_processors(parse_parameters({}), 1) == []
    assert P.build_warpers(parse_parameters({"do_sample": True})) == []
    procs = P.build_processors(parse_parameters({"repetition_penalty": 1.2, "no_repeat_ngram_size": 3,
                                                 "min_new_tokens": 2}), 1)
    assert [type(p).__name__ for p in procs] == ["RepetitionPenalty", "NoRepeatNGram", "MinNewTokens"]
    warpers = P.build_warpers(parse_parameters({"temperature": 0.7, "top_k": 5, "top_p": 0.9, "typical_p": 0.8}))
    assert [type(w).__name__ for w in warpers] == ["Temperature", "TopK", "TopP", "TypicalP"]


def test_kth_largest_equals_a_whole_partition_on_ties_infinities_and_any_k():
    rng = np.random.RandomState(0)
    for trial in range(1500):
        n = int(rng.randint(1, 4000))
        k = int(rng.randint(1, n + 1))
        values = rng.randn(n) * rng.choice([0.01, 1.0, 100.0])
        if trial % 3 == 0:
            values = np.round(values)  # many ties
        if trial % 5 == 0:
            values[rng.rand(n) < 0.3] = -np.inf  # masked by an earlier processor
        assert P.kth_largest(values.copy(), k) == np.partition(values, n - k)[n - k], (n, k)


def test_sampling_among_the_candidates_draws_what_the_whole_vocabulary_draws():
    """The sampler's candidate-only path (after top-k) against the dense formula, draw by draw."""
    from kogpt2_serving.generation.strategies import Sampler

    rng = np.random.RandomState(3)
    logits = rng.randn(5000) * 3
    sampler = Sampler([], [P.TopK(40)], np.random.RandomState(11))
    reference = np.random.RandomState(11)
    for _ in range(300):
        token, logprob = sampler.choose(logits.copy(), P.RowContext([]))
        dense = P.softmax(P.TopK(40)(logits.copy(), None))
        want = int(np.searchsorted(np.cumsum(dense), reference.random_sample(), side="right"))
        assert (token, logprob) == (want, pytest.approx(float(np.log(dense[want])), abs=1e-12))
