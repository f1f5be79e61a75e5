"""Stopping criteria and finish reasons, including stop strings spanning several tokens."""
from kogpt2_serving.generation.generator import Generator
from kogpt2_serving.generation.params import parse_parameters
from kogpt2_serving.generation.stopping import EOS, LENGTH, STOP_SEQUENCE, StopDecision, StoppingCriteria


def feed(criteria, tokens, pieces):
    text, out = "", []
    for n, (token, piece) in enumerate(zip(tokens, pieces), 1):
        text += piece
        out.append(criteria(token, n, text, len(piece)))
    return out


def test_eos_and_length():
    c = StoppingCriteria(eos_id=2, max_new_tokens=3)
    assert feed(c, [5, 2], ["a", ""]) == [StopDecision(False, None), StopDecision(True, EOS)]
    assert feed(c, [5, 6, 7], ["a", "b", "c"])[-1] == StopDecision(True, LENGTH)
    assert feed(c, [5, 6, 2], ["a", "b", ""])[-1] == StopDecision(True, EOS)  # eos wins on the last step


def test_stop_string_spanning_tokens():
    c = StoppingCriteria(eos_id=2, max_new_tokens=10, stop=["국민에게"])
    decisions = feed(c, [10, 11, 12, 13], [" 주권은", " 국", "민에", "게 있고"])
    assert [d.stop for d in decisions] == [False, False, False, True]
    assert decisions[-1] == StopDecision(True, STOP_SEQUENCE, len(" 주권은 "))


def test_stop_string_inside_one_token_and_earliest_match():
    c = StoppingCriteria(eos_id=2, max_new_tokens=10, stop=["다.", "있"])
    d = feed(c, [10, 11], [" 있고 나온다.", "x"])[0]
    assert d == StopDecision(True, STOP_SEQUENCE, 1)


def test_generator_cuts_stop_sequence(generator):
    free = generator.generate(["대한민국은"], parse_parameters({"max_new_tokens": 20}))[0][0]
    assert free.finish_reason == LENGTH and len(free.text) > 6
    stop = free.text[3:6]  # a string the model really produces, across whatever tokens
    seq = generator.generate(["대한민국은"], parse_parameters({"max_new_tokens": 20, "stop": stop}))[0][0]
    assert seq.finish_reason == STOP_SEQUENCE
    assert seq.text == free.text[:free.text.index(stop)]
    assert seq.generated_tokens < free.generated_tokens or stop in free.text[-3:]


def test_generator_eos_finish(tiny_model):
    """A checkpoint whose </s> dominates ends with eos_token after one token."""
    from kogpt2_serving.files.loader import load_model
    import shutil
    import tempfile

    d = tempfile.mkdtemp()
    shutil.rmtree(d)
    shutil.copytree(tiny_model.files.directory, d)
    loaded = load_model(d, device="cpu")
    eos = loaded.tokenizer.eos_id
    params = loaded.engine.model.named_weights()
    w = params["_final_ln.beta"].data()
    params["_final_ln.beta"].set_data(w * 0 + params["_embed.weight"].data()[eos] * 50)
    (seq,), = Generator(loaded).generate(["대한민국은"], parse_parameters({}))
    assert (seq.finish_reason, seq.generated_tokens, seq.token_ids, seq.text) == (EOS, 1, [eos], "")
    (seq,), = Generator(loaded).generate(["대한민국은"], parse_parameters({"min_new_tokens": 3, "max_new_tokens": 5}))
    assert seq.generated_tokens >= 4 and seq.token_ids[:3].count(eos) == 0
