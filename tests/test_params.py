"""Generation parameters: defaults, normalization, and one exact message per invalid case."""
import pytest

from kogpt2_serving.errors import InvalidParameter
from kogpt2_serving.generation.params import GenerationParameters, parse_parameters


def test_defaults():
    p = parse_parameters(None)
    assert p == GenerationParameters()
    assert (p.max_new_tokens, p.do_sample, p.num_beams, p.return_full_text, p.details, p.stop) == (
        64, False, 1, True, False, ())


def test_normalization():
    p = parse_parameters({"stop": "다.", "max_new_tokens": 8.0, "seed": None, "top_p": None})
    assert (p.stop, p.max_new_tokens, p.seed, p.top_p) == (("다.",), 8, None, 1.0)
    assert parse_parameters({"temperature": 0.7}).do_sample is True  # as TGI: a sampling knob turns sampling on
    assert parse_parameters({"temperature": 0}).do_sample is False  # temperature 0 = greedy
    assert parse_parameters({"top_k": 50, "do_sample": True}).top_k == 50


@pytest.mark.parametrize("raw,name,message", [
    ({"top_p": 1.5}, "top_p", "top_p must be in (0, 1], got 1.5"),
    ({"top_p": 0}, "top_p", "top_p must be in (0, 1], got 0.0"),
    ({"typical_p": -0.1}, "typical_p", "typical_p must be in (0, 1], got -0.1"),
    ({"temperature": -1}, "temperature", "temperature must be a finite number > 0, got -1.0"),
    ({"temperature": "hot"}, "temperature", "temperature must be a number, got 'hot'"),
    ({"top_k": -5}, "top_k", "top_k must be >= 0, got -5"),
    ({"top_k": 2.5}, "top_k", "top_k must be an integer, got 2.5"),
    ({"max_new_tokens": 0}, "max_new_tokens", "max_new_tokens must be in [1, 1024], got 0"),
    ({"max_new_tokens": 5000}, "max_new_tokens", "max_new_tokens must be in [1, 1024], got 5000"),
    ({"max_new_tokens": "10"}, "max_new_tokens", "max_new_tokens must be an integer, got '10'"),
    ({"max_new_tokens": True}, "max_new_tokens", "max_new_tokens must be an integer, got True"),
    ({"min_new_tokens": 20, "max_new_tokens": 10}, "min_new_tokens",
     "min_new_tokens must be in [0, max_new_tokens] (10), got 20"),
    ({"repetition_penalty": 0}, "repetition_penalty", "repetition_penalty must be a finite number > 0, got 0.0"),
    ({"no_repeat_ngram_size": -1}, "no_repeat_ngram_size", "no_repeat_ngram_size must be >= 0, got -1"),
    ({"num_beams": 0}, "num_beams", "num_beams must be in [1, 16], got 0"),
    ({"num_beams": 17}, "num_beams", "num_beams must be in [1, 16], got 17"),
    ({"num_return_sequences": 0}, "num_return_sequences", "num_return_sequences must be in [1, 16], got 0"),
    ({"seed": -1, "do_sample": True}, "seed", "seed must be in [0, 4294967295], got -1"),
    ({"seed": "abc"}, "seed", "seed must be an integer, got 'abc'"),
    ({"do_sample": "yes"}, "do_sample", "do_sample must be true or false, got 'yes'"),
    ({"details": 1}, "details", "details must be true or false, got 1"),
    ({"stop": 5}, "stop", "stop must be a string or a list of strings, got 5"),
    ({"stop": ["a", ""]}, "stop", "stop strings must not be empty"),
    ({"stop": ["x"] * 17}, "stop", "stop allows at most 16 strings, got 17"),
    ({"length_penalty": float("nan"), "num_beams": 2}, "length_penalty",
     "length_penalty must be a finite number, got nan"),
    ({"top_pp": 0.9}, "top_pp", "unknown parameter 'top_pp'; allowed: max_new_tokens, min_new_tokens, do_sample, "
     "temperature, top_k, top_p, typical_p, repetition_penalty, no_repeat_ngram_size, num_beams, length_penalty, "
     "early_stopping, num_return_sequences, stop, seed, return_full_text, details"),
    ([1, 2], "parameters", "parameters must be a JSON object, got array"),
    # conflicting combinations
    ({"num_beams": 4, "do_sample": True}, "do_sample",
     "beam search (num_beams=4) cannot be combined with do_sample=true"),
    ({"num_beams": 2, "num_return_sequences": 3}, "num_return_sequences",
     "num_return_sequences (3) must be <= num_beams (2)"),
    ({"num_return_sequences": 2}, "num_return_sequences",
     "num_return_sequences > 1 needs do_sample=true or num_beams >= num_return_sequences (greedy decoding gives "
     "one sequence)"),
    ({"top_k": 10, "do_sample": False}, "top_k", "top_k only applies when sampling; it conflicts with do_sample=false"),
    ({"temperature": 0, "do_sample": True}, "temperature",
     "temperature 0 means greedy decoding; it conflicts with do_sample=true (use a temperature > 0)"),
    ({"early_stopping": True}, "early_stopping", "early_stopping only applies to beam search (num_beams > 1)"),
    ({"length_penalty": 2.0}, "length_penalty", "length_penalty only applies to beam search (num_beams > 1)"),
])
def test_invalid(raw, name, message):
    with pytest.raises(InvalidParameter) as e:
        parse_parameters(raw)
    assert (e.value.parameter, str(e.value), e.value.status) == (name, message, 400)
