"""Checks that a model in any weight format decodes with every strategy (greedy, sampling, beam
search): shared by the bfloat16 and int8 tests."""
from kogpt2_serving.generation.generator import Generator
from kogpt2_serving.generation.params import parse_parameters

STRATEGIES = ({"max_new_tokens": 12, "min_new_tokens": 12},
              {"max_new_tokens": 12, "min_new_tokens": 12, "do_sample": True, "seed": 3, "top_p": 0.9},
              {"max_new_tokens": 12, "min_new_tokens": 12, "num_beams": 3, "num_return_sequences": 2})


def check_every_strategy(loaded, prompts):
    """Each strategy gives every prompt its sequences of exactly 12 new tokens."""
    generator = Generator(loaded)
    for raw in STRATEGIES:
        per_prompt = generator.generate(prompts, parse_parameters(raw))
        assert len(per_prompt) == len(prompts)
        for sequences in per_prompt:
            assert [len(s.token_ids) for s in sequences] == [12] * raw.get("num_return_sequences", 1), raw
