"""Sampling: reproducible with a seed, and distributed as the exact softmax says."""
import numpy as np
from scipy.stats import chisquare

from kogpt2_serving.generation import processors as P
from kogpt2_serving.generation.params import parse_parameters
from kogpt2_serving.generation.strategies import Sampler


def test_frequencies_match_softmax_chi_square():
    logits = np.array([2.0, 1.0, 0.5, 0.0, -1.0, -3.0])
    sampler = Sampler([], [], np.random.RandomState(1234))
    draws = 30000
    counts = np.bincount([sampler.choose(logits.copy(), P.RowContext([]))[0] for _ in range(draws)], minlength=6)
    expected = P.softmax(logits) * draws
    stat, pvalue = chisquare(counts, expected)
    assert pvalue > 0.01, (counts, expected)


def test_frequencies_with_temperature_and_top_k_chi_square():
    logits = np.array([1.0, 0.8, 0.3, 0.2, -0.5, -2.0])
    params = parse_parameters({"temperature": 0.5, "top_k": 3})
    sampler = Sampler([], P.build_warpers(params), np.random.RandomState(99))
    draws = 20000
    counts = np.bincount([sampler.choose(logits.copy(), P.RowContext([]))[0] for _ in range(draws)], minlength=6)
    assert counts[3:].sum() == 0  # outside the top 3: never
    expected = P.softmax(logits[:3] / 0.5) * draws
    assert chisquare(counts[:3], expected).pvalue > 0.01


def test_reported_logprob_is_the_sampling_distribution():
    logits = np.array([0.0, 1.0, 2.0])
    token, logprob = Sampler([], [], np.random.RandomState(0)).choose(logits.copy(), P.RowContext([]))
    assert abs(logprob - P.log_softmax(logits)[token]) < 1e-12


def test_same_seed_same_output(generator):
    params = parse_parameters({"do_sample": True, "seed": 42, "max_new_tokens": 20, "top_k": 50})
    a = generator.generate(["대한민국은"], params)
    b = generator.generate(["대한민국은"], params)
    assert a == b and a[0][0].seed == 42
    other = generator.generate(["대한민국은"], params._replace(seed=43))
    assert other[0][0].token_ids != a[0][0].token_ids


def test_seed_is_drawn_and_reported_and_reproduces(generator):
    params = parse_parameters({"do_sample": True, "max_new_tokens": 15})
    (first,), = generator.generate(["서울에서"], params)
    assert isinstance(first.seed, int)
    (again,), = generator.generate(["서울에서"], params._replace(seed=first.seed))
    assert again == first


def test_seeded_request_unaffected_by_batch_neighbours(generator):
    sampled = parse_parameters({"do_sample": True, "seed": 7, "max_new_tokens": 18, "top_p": 0.9})
    alone = generator.generate_many([("아기 공룡", sampled)])[0]
    mixed = generator.generate_many([
        ("대한민국은", parse_parameters({"max_new_tokens": 5})),
        ("아기 공룡", sampled),
        ("오늘은", parse_parameters({"do_sample": True, "seed": 8, "max_new_tokens": 30})),
    ])
    assert mixed[1] == alone


def test_num_return_sequences_sampling(generator):
    params = parse_parameters({"do_sample": True, "seed": 3, "num_return_sequences": 3, "max_new_tokens": 12})
    (seqs,) = generator.generate(["학생들은"], params)
    assert len(seqs) == 3 and len({tuple(s.token_ids) for s in seqs}) > 1
    assert all(s.seed == 3 for s in seqs)


def test_details_logprobs(generator):
    params = parse_parameters({"max_new_tokens": 6, "details": True})
    (seq,), = generator.generate(["대한민국은"], params)
    assert [t.id for t in seq.tokens] == seq.token_ids
    assert "".join(t.text for t in seq.tokens) == seq.text
    assert all(t.logprob <= 0 for t in seq.tokens)
    plain, = generator.generate(["대한민국은"], params._replace(details=False))
    assert plain[0].tokens is None and plain[0].token_ids == seq.token_ids
