"""KoGPT2 v2 / HF GPT-2 directories served by our engine, checked against transformers itself.

The reference is transformers' GPT2LMHeadModel reading the very directory we load (written by
its own save_pretrained, or as an older pickled state dict). Weights use initializer_range
0.2 so that the two GELU variants differ by more than the tolerance (see
test_wrong_gelu_variant_is_detected) and greedy continuations of
the random model are varied rather than one repeated id.
"""
import json
import os
import shutil
import sys

import numpy as np
import pytest

from kogpt2_serving.errors import ModelLoadError
from kogpt2_serving.files.loader import load_model
from kogpt2_serving.testing import make_hf_test_model

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

TOL = 1e-4
PROMPTS = ["아기 공룡 둘리는 희동이와", "2019년 한해를 보내며,", "오늘은 날씨가 맑고", "서울에서 부산까지 기차로"]
INIT = 0.2


def reference_model(directory):
    return transformers.GPT2LMHeadModel.from_pretrained(directory).eval()


def reference_logits(model, ids):
    with torch.no_grad():
        return model(torch.tensor([ids])).logits[0].numpy()  # (T, V)


def greedy(engine, ids, max_new_tokens, eos_id):
    """Plain argmax decoding over Engine.start/step (our side of the comparison)."""
    state, logits = engine.start([ids], max_new_tokens)
    out = []
    for _ in range(max_new_tokens):
        token = int(np.argmax(logits[0]))
        out.append(token)
        if token == eos_id:
            break
        logits = engine.step(state, [token])
    return out


def reference_greedy(model, ids, max_new_tokens, eos_id, pad_id):
    with torch.no_grad():
        out = model.generate(torch.tensor([ids]), attention_mask=torch.ones((1, len(ids)), dtype=torch.long),
                             max_new_tokens=max_new_tokens, do_sample=False, eos_token_id=eos_id, pad_token_id=pad_id)
    return out[0, len(ids):].tolist()


@pytest.fixture(scope="module", params=["safetensors", "bin"])
def hf_pair(request, tmp_path_factory):
    """(our LoadedModel, transformers' model, transformers' tokenizer) for one weights format."""
    d = make_hf_test_model(str(tmp_path_factory.mktemp("hf-" + request.param)), weights=(request.param,),
                           init_range=INIT)
    return load_model(d, device="cpu"), reference_model(d), transformers.AutoTokenizer.from_pretrained(d)


def test_format_and_config_come_from_the_files(hf_pair):
    ours, ref, _ = hf_pair
    assert ours.files.format == "hf-gpt2"
    assert ours.config.vocab_size == ref.config.vocab_size
    assert ours.config.activation_function == "gelu_new"
    assert (ours.config.n_layer, ours.config.n_head, ours.config.n_embd) == (2, 4, 64)


@pytest.mark.parametrize("prompt", PROMPTS)
def test_full_logits_match_transformers(hf_pair, prompt):
    ours, ref, ref_tok = hf_pair
    ids = ours.tokenizer.encode_prompt(prompt)
    assert ids == ref_tok(prompt)["input_ids"]
    expected = reference_logits(ref, ids)
    actual = ours.engine.full_logits([ids])[0]
    assert actual.shape == expected.shape
    np.testing.assert_allclose(actual, expected, rtol=0, atol=TOL)


def test_cached_decoding_matches_transformers_at_every_position(hf_pair):
    ours, ref, _ = hf_pair
    ids = ours.tokenizer.encode_prompt(PROMPTS[0])
    continuation = [10, 200, 7, 345, 3]
    expected = reference_logits(ref, ids + continuation)  # (T, V)
    state, logits = ours.engine.start([ids], len(continuation) + 1)
    np.testing.assert_allclose(logits[0], expected[len(ids) - 1], rtol=0, atol=TOL)
    for n, token in enumerate(continuation):
        logits = ours.engine.step(state, [token])
        np.testing.assert_allclose(logits[0], expected[len(ids) + n], rtol=0, atol=TOL)


@pytest.mark.parametrize("prompt", PROMPTS)
def test_greedy_32_tokens_identical_ids_and_text(hf_pair, prompt):
    ours, ref, ref_tok = hf_pair
    ids = ours.tokenizer.encode_prompt(prompt)
    tok = ours.tokenizer
    actual = greedy(ours.engine, ids, 32, tok.eos_id)
    expected = reference_greedy(ref, ids, 32, tok.eos_id, tok.pad_id)
    assert actual == expected
    assert len(set(actual)) > 5  # a varied continuation, not one id repeated
    assert tok.decode(actual) == ref_tok.decode(expected, skip_special_tokens=True)
    assert tok.decode(ids + actual) == ref_tok.decode(ids + expected, skip_special_tokens=True)


@pytest.mark.parametrize("activation", ["gelu", "gelu_new"])
def test_both_gelu_variants_match_transformers(tmp_path, activation):
    d = make_hf_test_model(str(tmp_path), activation=activation, init_range=INIT)
    ours = load_model(d, device="cpu")
    assert ours.config.activation_function == activation
    ids = ours.tokenizer.encode_prompt(PROMPTS[1])
    np.testing.assert_allclose(ours.engine.full_logits([ids])[0], reference_logits(reference_model(d), ids),
                               rtol=0, atol=TOL)


def test_wrong_gelu_variant_is_detected(tmp_path):
    """The GELU tests can fail: serving gelu_new weights with the erf GELU misses by > 3x TOL."""
    d = make_hf_test_model(str(tmp_path), activation="gelu_new", init_range=INIT)
    expected = reference_logits(reference_model(d), [20, 30, 40, 50, 60])
    edit_config(d, activation_function="gelu")
    wrong = load_model(d, device="cpu").engine.full_logits([[20, 30, 40, 50, 60]])[0]
    assert np.abs(wrong - expected).max() > 3 * TOL


def test_float16_safetensors_load_as_their_float32_values(tmp_path):
    from safetensors.numpy import load_file, save_file

    d = make_hf_test_model(str(tmp_path), init_range=INIT)
    path = os.path.join(d, "model.safetensors")
    half = {k: v.astype(np.float16) for k, v in load_file(path).items()}
    save_file(half, path, metadata={"format": "pt"})
    params = load_model(d, device="cpu").engine.model.named_weights()
    np.testing.assert_array_equal(params["_embed.weight"].data().asnumpy(),
                                  half["transformer.wte.weight"].astype(np.float32))
    # Conv1D (in, out) -> Dense (out, in)
    np.testing.assert_array_equal(params["_self_attention_layers.1._multi_head_qkv_proj.weight"].data().asnumpy(),
                                  half["transformer.h.1.attn.c_attn.weight"].astype(np.float32).T)


# ---- malformed checkpoints and configs ----

@pytest.fixture(scope="module")
def hf_source(tmp_path_factory):
    return make_hf_test_model(str(tmp_path_factory.mktemp("hf-src")), weights=("safetensors", "bin"))


@pytest.fixture
def hf_copy(hf_source, tmp_path):
    d = str(tmp_path / "model")
    shutil.copytree(hf_source, d)
    os.remove(os.path.join(d, "pytorch_model.bin"))
    return d


def edit_config(directory, **changes):
    path = os.path.join(directory, "config.json")
    with open(path) as f:
        config = json.load(f)
    config.update(changes)
    with open(path, "w") as f:
        json.dump(config, f)


def edit_safetensors(directory, edit):
    from safetensors.numpy import load_file, save_file

    path = os.path.join(directory, "model.safetensors")
    arrays = load_file(path)
    edit(arrays)
    save_file(arrays, path)
    return path


def test_missing_parameter(hf_copy):
    path = edit_safetensors(hf_copy, lambda a: a.pop("transformer.h.1.mlp.c_fc.bias"))
    with pytest.raises(ModelLoadError) as e:
        load_model(hf_copy, device="cpu")
    assert str(e.value) == ("checkpoint {}: missing parameter transformer.h.1.mlp.c_fc.bias (expected shape (256,) "
                            "from config.json)".format(path))


def test_wrong_shape_names_hf_key_and_both_shapes(hf_copy):
    def transpose(a):
        a["transformer.h.0.attn.c_attn.weight"] = np.ascontiguousarray(a["transformer.h.0.attn.c_attn.weight"].T)

    path = edit_safetensors(hf_copy, transpose)
    with pytest.raises(ModelLoadError) as e:
        load_model(hf_copy, device="cpu")
    assert str(e.value) == ("checkpoint {}: parameter transformer.h.0.attn.c_attn.weight has shape (192, 64), "
                            "expected (64, 192) from config.json".format(path))


def test_untied_lm_head_is_refused(hf_copy):
    def untie(a):
        a["lm_head.weight"] = a["transformer.wte.weight"] + 1

    edit_safetensors(hf_copy, untie)
    with pytest.raises(ModelLoadError, match="lm_head.weight differs from transformer.wte.weight"):
        load_model(hf_copy, device="cpu")


def test_tied_lm_head_copy_is_accepted(hf_copy):
    def tie(a):
        a["lm_head.weight"] = a["transformer.wte.weight"].copy()

    edit_safetensors(hf_copy, tie)
    assert load_model(hf_copy, device="cpu").files.format == "hf-gpt2"


def test_unexpected_parameter(hf_copy):
    def extra(a):
        a["score.weight"] = np.zeros((2, 64), np.float32)

    path = edit_safetensors(hf_copy, extra)
    with pytest.raises(ModelLoadError) as e:
        load_model(hf_copy, device="cpu")
    assert str(e.value) == "checkpoint {}: unexpected parameters score.weight (not part of a GPT-2 LM)".format(path)


def test_bare_gpt2model_keys_without_prefix_load(hf_copy, hf_source):
    edit_safetensors(hf_copy, lambda a: a.update({k[len("transformer."):]: a.pop(k) for k in list(a)}))
    ids = [20, 30, 40]
    np.testing.assert_array_equal(load_model(hf_copy, device="cpu").engine.full_logits([ids]),
                                  load_model(hf_source, device="cpu").engine.full_logits([ids]))


def test_not_a_gpt2_checkpoint(hf_copy):
    path = edit_safetensors(hf_copy, lambda a: a.update({"x.wte.weight": a.pop("transformer.wte.weight")}))
    with pytest.raises(ModelLoadError, match="checkpoint {}: not a GPT-2 checkpoint: no transformer.wte.weight"
                       .format(path)):
        load_model(hf_copy, device="cpu")


def test_corrupt_safetensors(hf_copy):
    path = os.path.join(hf_copy, "model.safetensors")
    with open(path, "wb") as f:
        f.write(b"\x08\x00\x00\x00\x00\x00\x00\x00garbage!")
    with pytest.raises(ModelLoadError, match="cannot read {}: ".format(path)):
        load_model(hf_copy, device="cpu")


def test_integer_parameter_is_refused(hf_copy):
    def ints(a):
        a["transformer.ln_f.bias"] = a["transformer.ln_f.bias"].astype(np.int32)

    path = edit_safetensors(hf_copy, ints)
    with pytest.raises(ModelLoadError) as e:
        load_model(hf_copy, device="cpu")
    assert str(e.value) == "checkpoint {}: parameter transformer.ln_f.bias has dtype int32, expected floating point" \
        .format(path)


@pytest.mark.parametrize("changes,message", [
    ({"model_type": "llama"}, "model_type is 'llama'; only GPT-2 models"),
    ({"scale_attn_by_inverse_layer_idx": True}, "scale_attn_by_inverse_layer_idx = True is not supported"),
    ({"scale_attn_weights": False}, "scale_attn_weights = False is not supported"),
    ({"add_cross_attention": True}, "add_cross_attention = True is not supported"),
    ({"activation_function": "relu"}, "activation_function must be one of gelu, gelu_new, gelu_pytorch_tanh"),
    ({"n_embd": 128}, r"transformer.wte.weight has shape \(362, 64\), expected \(362, 128\)"),
])
def test_config_options_we_do_not_run_are_refused(hf_copy, changes, message):
    edit_config(hf_copy, **changes)
    with pytest.raises(ModelLoadError, match=message):
        load_model(hf_copy, device="cpu")


def test_config_vocab_smaller_than_tokenizer(hf_copy):
    edit_config(hf_copy, vocab_size=300)

    def shrink(a):
        a["transformer.wte.weight"] = a["transformer.wte.weight"][:300]

    edit_safetensors(hf_copy, shrink)
    with pytest.raises(ModelLoadError) as e:
        load_model(hf_copy, device="cpu")
    assert str(e.value) == "vocabulary mismatch: {} has vocab_size 300 but {} has ids up to 345".format(
        os.path.join(hf_copy, "config.json"), os.path.join(hf_copy, "tokenizer.json"))


# ---- pytorch_model.bin and missing optional packages ----

def test_bin_only_with_legacy_buffers_equals_safetensors(hf_source, tmp_path):
    d = str(tmp_path / "bin")
    shutil.copytree(hf_source, d)
    os.remove(os.path.join(d, "model.safetensors"))
    bin_model = load_model(d, device="cpu")
    assert bin_model.files.params == os.path.join(d, "pytorch_model.bin")
    ids = [20, 30, 40, 50]
    np.testing.assert_array_equal(bin_model.engine.full_logits([ids]),
                                  load_model(hf_source, device="cpu").engine.full_logits([ids]))


def test_both_weight_files_prefer_safetensors(hf_source):
    assert load_model(hf_source, device="cpu").files.params == os.path.join(hf_source, "model.safetensors")


def test_bin_without_torch_says_what_to_do(hf_source, tmp_path, monkeypatch):
    d = str(tmp_path / "bin")
    shutil.copytree(hf_source, d)
    os.remove(os.path.join(d, "model.safetensors"))
    monkeypatch.setitem(sys.modules, "torch", None)  # `import torch` raises ImportError
    with pytest.raises(ModelLoadError) as e:
        load_model(d, device="cpu")
    assert str(e.value) == ("{} is a PyTorch pickle and reading it needs torch, which is not installed. Install torch "
                            "(CPU build) or convert the file to model.safetensors on a machine that has it"
                            .format(os.path.join(d, "pytorch_model.bin")))


@pytest.mark.parametrize("module,file", [("safetensors", "model.safetensors"), ("tokenizers", "tokenizer.json")])
def test_missing_hf_extra_says_install_hf(hf_copy, monkeypatch, module, file):
    monkeypatch.setitem(sys.modules, module, None)
    with pytest.raises(ModelLoadError) as e:
        load_model(hf_copy, device="cpu")
    assert str(e.value) == "reading {} needs the {} package: install kogpt2-serving[hf]".format(
        os.path.join(hf_copy, file), module)


def test_corrupt_bin(hf_source, tmp_path):
    d = str(tmp_path / "bin")
    shutil.copytree(hf_source, d)
    os.remove(os.path.join(d, "model.safetensors"))
    path = os.path.join(d, "pytorch_model.bin")
    with open(path, "wb") as f:
        f.write(b"not a pickle")
    with pytest.raises(ModelLoadError, match="cannot read {} as a PyTorch state dict".format(path)):
        load_model(d, device="cpu")


def test_generator_serves_v2_like_transformers(hf_pair):
    """The serving path (Generator: greedy chooser, stopping, incremental text) on a v2 directory."""
    from kogpt2_serving.generation.generator import Generator
    from kogpt2_serving.generation.params import parse_parameters

    ours, ref, ref_tok = hf_pair
    params = parse_parameters({"max_new_tokens": 32})
    for prompt, (seq,) in zip(PROMPTS, Generator(ours).generate(PROMPTS, params)):
        ids = ours.tokenizer.encode_prompt(prompt)
        expected = reference_greedy(ref, ids, 32, ours.tokenizer.eos_id, ours.tokenizer.pad_id)
        assert seq.token_ids == expected
        # The continuation's text in context (a leading space after the prompt is kept).
        prompt_text = ref_tok.decode(ids, skip_special_tokens=True)
        assert prompt_text + seq.text == ref_tok.decode(ids + expected, skip_special_tokens=True)


def test_bfloat16_safetensors(hf_copy):
    """Loaded exactly when NumPy knows bfloat16 (ml_dtypes installed); otherwise an error that
    says what to do."""
    from safetensors.torch import load_file, save_file

    path = os.path.join(hf_copy, "model.safetensors")
    bf16 = {k: v.to(torch.bfloat16) for k, v in load_file(path).items()}
    save_file(bf16, path)
    try:
        import ml_dtypes  # noqa: F401
    except ImportError:
        with pytest.raises(ModelLoadError) as e:
            load_model(hf_copy, device="cpu")
        assert str(e.value).startswith("cannot read {}: ".format(path))
        assert str(e.value).endswith("; NumPy has no bfloat16: save the weights as float32 or float16")
        return
    from kogpt2_serving.files.hf_checkpoint import read_hf_arrays

    arrays = read_hf_arrays(path)
    for key, tensor in bf16.items():
        if tensor.is_floating_point():
            np.testing.assert_array_equal(arrays[key], tensor.to(torch.float32).numpy())
    load_model(hf_copy, device="cpu")
