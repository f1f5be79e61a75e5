"""Beam search on a tiny-vocabulary model equals exhaustive search; one beam equals greedy."""
import itertools

import numpy as np
import pytest

from kogpt2_serving.files import checkpoint
from kogpt2_serving.generation import processors as P
from kogpt2_serving.files.config import GPT2Config
from kogpt2_serving.generation.params import GenerationParameters, parse_parameters
from kogpt2_serving.generation.strategies import beam_search, length_normalized
from kogpt2_serving.testing import random_params

V, EOS, PROMPT = 6, 2, [1, 4]


@pytest.fixture(scope="module")
def engine():
    import mxnet as mx

    from kogpt2_serving.model.engine import Engine
    from kogpt2_serving.model.network import GPT2Model

    config = GPT2Config(vocab_size=V, n_positions=16, n_embd=16, n_layer=2, n_head=2)
    params = random_params(config, seed=3)
    params["_embed.weight"] = params["_embed.weight"] * 8  # sharper distributions, </s> in play
    model = GPT2Model(config)
    checkpoint.load_into(model, params, mx.cpu(), "float32")
    return Engine(model, mx.cpu())


def exhaustive(engine, params, processors, enders=(EOS,)):
    """Every sequence: ended by its first token in `enders` (</s>, or a stop) at any length <=
    max, or exactly max long without one."""
    scored = []
    max_len = params.max_new_tokens
    for length in range(1, max_len + 1):
        for body in itertools.product([t for t in range(V) if t not in enders], repeat=length - 1):
            for last in range(V):
                seq = list(body) + [last]
                if last not in enders and length < max_len:
                    continue
                total = sequence_logprob(engine, seq, params, processors)
                if np.isfinite(total):
                    scored.append((length_normalized(total, length, params.length_penalty), seq))
    scored.sort(key=lambda s: -s[0])
    return scored


def sequence_logprob(engine, seq, params, processors):
    total, context = 0.0, P.RowContext(PROMPT, params.no_repeat_ngram_size)
    logits = engine.full_logits([PROMPT + seq])[0].astype(np.float64)
    for i, token in enumerate(seq):
        row = P.apply(processors, logits[len(PROMPT) - 1 + i].copy(), context)
        total += P.log_softmax(row)[token]
        context.append(token)
    return total


@pytest.mark.parametrize("length_penalty,extra", [
    (1.0, {}), (0.0, {}), (2.0, {}), (-0.5, {}),
    (1.0, {"repetition_penalty": 1.8, "no_repeat_ngram_size": 2}),
    (1.0, {"min_new_tokens": 2}),
])
def test_wide_beam_equals_exhaustive_search(engine, length_penalty, extra):
    """25 beams keep every live prefix of a 3-token search over 5 non-</s> tokens."""
    params = GenerationParameters(max_new_tokens=3, num_beams=25, num_return_sequences=4,
                                  length_penalty=length_penalty)._replace(**extra)
    processors = P.build_processors(params, EOS)
    best = exhaustive(engine, params, processors)[:4]
    found = beam_search(engine, PROMPT, params, EOS, processors)
    assert [h.tokens for h in found] == [seq for _, seq in best]
    assert np.allclose([h.score for h in found], [score for score, _ in best], atol=1e-5)


def test_some_compared_results_end_with_eos(engine):
    """The exhaustive comparison must exercise </s>-terminated hypotheses, not only length ones."""
    params = GenerationParameters(max_new_tokens=3, num_beams=25, num_return_sequences=4, length_penalty=0.0)
    found = beam_search(engine, PROMPT, params, EOS, [])
    assert {h.finish_reason for h in found} == {"eos_token", "length"}


def test_exhaustive_case_includes_eos_endings(engine):
    params = GenerationParameters(max_new_tokens=3)
    assert any(seq[-1] == EOS for _, seq in exhaustive(engine, params, [])[:5])


def test_one_beam_equals_greedy(engine):
    params = GenerationParameters(max_new_tokens=8, num_beams=1, early_stopping=True)
    (hyp,) = beam_search(engine, PROMPT, params, EOS, [])
    ids, greedy = list(PROMPT), []
    for _ in range(8):
        token = int(np.argmax(engine.full_logits([ids])[0, -1]))
        greedy.append(token)
        ids.append(token)
        if token == EOS:
            break
    assert hyp.tokens == greedy


def test_beam_search_through_generator(generator):
    params = parse_parameters({"num_beams": 4, "num_return_sequences": 3, "max_new_tokens": 10, "details": True})
    (seqs,) = generator.generate(["대한민국은"], params)
    assert len(seqs) == 3 and len({tuple(s.token_ids) for s in seqs}) == 3
    for s in seqs:
        assert s.seed is None and s.finish_reason in ("length", "eos_token")
        assert [t.id for t in s.tokens] == s.token_ids
    greedy = generator.generate(["대한민국은"], parse_parameters({"max_new_tokens": 10, "details": True}))[0][0]
    best = sum(t.logprob for t in seqs[0].tokens) / len(seqs[0].tokens)
    assert best >= sum(t.logprob for t in greedy.tokens) / len(greedy.tokens) - 1e-6


def test_num_beams_one_is_greedy_in_generator(generator):
    a = generator.generate(["서울에서"], parse_parameters({"num_beams": 1, "max_new_tokens": 12}))
    b = generator.generate(["서울에서"], parse_parameters({"max_new_tokens": 12}))
    assert a == b


def test_best_flat_equals_a_stable_full_sort():
    from kogpt2_serving.generation.strategies import _best_flat

    rng = np.random.RandomState(0)
    for shape, count in [((4, 50), 8), ((1, 7), 7), ((3, 5), 20), ((2, 30), 1)]:
        scores = rng.randint(-5, 5, size=shape).astype(float)  # many ties
        scores[0, :3] = -np.inf
        expected = np.argsort(-scores, axis=None, kind="stable")[:count]
        assert list(_best_flat(scores, count)) == list(expected)


class StopAtToken:
    """A stop check by token id (the generator's checks detokenized text for stop strings)."""

    def __init__(self, token):
        self.token = token

    def start(self):
        return 0  # tokens seen: the state is carried per hypothesis

    def advance(self, state, token):
        return state + 1, token == self.token


@pytest.mark.parametrize("length_penalty", [1.0, 0.0, 2.0])
def test_a_stop_ends_hypotheses_during_the_search_as_exhaustive_search_does(engine, length_penalty):
    """Hypotheses are ranked as they end at a stop, not ranked whole and cut afterwards."""
    params = GenerationParameters(max_new_tokens=3, num_beams=25, num_return_sequences=4,
                                  length_penalty=length_penalty)
    unstopped = beam_search(engine, PROMPT, params, EOS, [])
    stop_token = next(t for h in unstopped for t in h.tokens if t != EOS)  # one the best results contain
    best = exhaustive(engine, params, [], enders=(EOS, stop_token))[:4]
    found = beam_search(engine, PROMPT, params, EOS, [], stop=StopAtToken(stop_token))
    assert [h.tokens for h in found] == [seq for _, seq in best]
    assert np.allclose([h.score for h in found], [score for score, _ in best], atol=1e-5)
    assert all(h.finish_reason == "stop_sequence" for h in found if h.tokens[-1] == stop_token)
    assert any(h.finish_reason == "stop_sequence" for h in found)
    assert [h.tokens for h in unstopped] != [h.tokens for h in found]  # so the stop changed the outcome


def test_stop_strings_end_beam_hypotheses_at_the_match_in_the_generator(generator):
    """Every returned sequence ends at its own stop match: the replay after ranking cuts nothing."""
    free = generator.generate(["대한민국은"], parse_parameters({"num_beams": 4, "num_return_sequences": 4,
                                                                "max_new_tokens": 12}))[0]
    stop = free[0].text[3:5]  # a string the unconstrained best hypothesis would run past
    params = parse_parameters({"num_beams": 4, "num_return_sequences": 4, "max_new_tokens": 12, "stop": [stop],
                               "details": True, "length_penalty": 0.0})  # sums: the stopped short ones rank
    (seqs,) = generator.generate(["대한민국은"], params)
    stopped = [s for s in seqs if s.finish_reason == "stop_sequence"]
    assert stopped, [s.text for s in seqs]
    for s in stopped:
        full = "".join(t.text for t in s.tokens)
        assert stop not in s.text and full.find(stop) >= len(full) - len(s.tokens[-1].text) - len(stop) + 1
        assert full.find(stop) == len(s.text)  # the text is cut exactly where the first match starts
