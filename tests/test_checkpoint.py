"""Every key layout loads to identical logits; every malformed directory or file gets its error."""
import glob
import json
import os
import shutil

import numpy as np
import pytest

from kogpt2_serving.files import checkpoint
from kogpt2_serving.errors import ModelLoadError
from kogpt2_serving.files.loader import load_model
from kogpt2_serving.testing import make_test_model

IDS = [1, 25, 60, 7, 99, 140]


def logits(directory):
    return load_model(directory, device="cpu").engine.full_logits([IDS])[0]


def params_file(directory):
    return glob.glob(os.path.join(directory, "*.params"))[0]


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    d = make_test_model(str(tmp_path_factory.mktemp("ref")), layout="structural")
    return d, logits(d)


# 12 keys per layer + embeddings and final LayerNorm: 148 for the real 12-layer file, 149 with
# the tied head stored twice.
@pytest.mark.parametrize("layout,prefix,count", [
    ("structural", "", 12 * 2 + 5),
    ("deduplicated", "", 12 * 2 + 4),
    ("legacy", "gpt2model0_", 12 * 2 + 4),
    ("legacy", "", 12 * 2 + 4),
])
def test_each_layout_loads_to_identical_logits(tmp_path, reference, layout, prefix, count):
    """Bit for bit on purpose: the same weights through the same kernels on the same shapes in
    one process, so any difference is a loading bug, not rounding."""
    d = make_test_model(str(tmp_path), layout=layout, prefix=prefix)
    import mxnet as mx

    keys = sorted(mx.nd.load(params_file(d)))
    assert len(keys) == count
    if layout == "legacy":
        assert prefix + "final_ln1_gamma" in keys and prefix + "ffn0_dense1_weight" in keys
    np.testing.assert_array_equal(logits(d), reference[1])


def test_logits_proj_only_dedup_variant_loads(tmp_path, reference):
    import mxnet as mx

    d = str(tmp_path / "m")
    shutil.copytree(reference[0], d)
    raw = mx.nd.load(params_file(d))
    raw["_logits_proj.weight"] = raw.pop("_embed.weight")
    mx.nd.save(params_file(d), raw)
    np.testing.assert_array_equal(logits(d), reference[1])


def test_float16_file_is_cast_on_load(tmp_path, reference):
    d = make_test_model(str(tmp_path), float16=True)
    assert np.abs(logits(d) - reference[1]).max() < 0.05  # fp16 storage rounding only


def test_legacy_layout_round_trips_names():
    config = load_config_like()
    for name in checkpoint.expected_shapes(config):
        legacy = checkpoint._rename(name, checkpoint._TO_LEGACY, last=config.n_layer - 1)
        assert checkpoint._rename(legacy, checkpoint._TO_CANONICAL) == name


def load_config_like():
    from kogpt2_serving.files.config import GPT2Config

    return GPT2Config(vocab_size=10, n_positions=8, n_embd=64, n_layer=3, n_head=1)


# ---- malformed checkpoints: each names the file, the key and the shapes ----

def edit_params(directory, edit):
    import mxnet as mx

    path = params_file(directory)
    raw = mx.nd.load(path)
    edit(raw)
    mx.nd.save(path, raw)
    return path


@pytest.fixture
def model_copy(tmp_path, reference):
    d = str(tmp_path / "m")
    shutil.copytree(reference[0], d)
    return d


def test_missing_key(model_copy):
    path = edit_params(model_copy, lambda raw: raw.pop("_ffn_layers.1._out_map.bias"))
    with pytest.raises(ModelLoadError) as e:
        load_model(model_copy)
    assert str(e.value) == "checkpoint {}: missing parameter _ffn_layers.1._out_map.bias (expected shape (64,))".format(path)


def test_wrong_shape(model_copy):
    import mxnet as mx

    def shrink(raw):
        raw["_attn_ln.0.gamma"] = mx.nd.ones((32,))
    path = edit_params(model_copy, shrink)
    with pytest.raises(ModelLoadError) as e:
        load_model(model_copy)
    assert str(e.value) == ("checkpoint {}: parameter _attn_ln.0.gamma has shape (32,), expected (64,) "
                            "from the model config".format(path))


def test_unexpected_key(model_copy):
    import mxnet as mx

    def add(raw):
        raw["_self_attention_layers.0._rel_bias"] = mx.nd.ones((3,))
    edit_params(model_copy, add)
    with pytest.raises(ModelLoadError, match=r"unexpected parameters _self_attention_layers.0._rel_bias"):
        load_model(model_copy)


def test_untied_head(model_copy):
    def untie(raw):
        raw["_logits_proj.weight"] = raw["_logits_proj.weight"] * 2
    edit_params(model_copy, untie)
    with pytest.raises(ModelLoadError, match=r"_embed.weight and _logits_proj.weight differ.*tied"):
        load_model(model_copy)


def test_unknown_legacy_key(tmp_path):
    import mxnet as mx

    d = make_test_model(str(tmp_path), layout="legacy")
    path = edit_params(d, lambda raw: raw.__setitem__("gpt2model0_adapter0_weight", mx.nd.ones((2,))))
    with pytest.raises(ModelLoadError) as e:
        load_model(d)
    assert str(e.value) == "checkpoint {}: unexpected parameter 'gpt2model0_adapter0_weight'".format(path)


def test_not_a_params_file(model_copy):
    path = params_file(model_copy)
    with open(path, "wb") as f:
        f.write(b"this is not an NDArray file")
    with pytest.raises(ModelLoadError, match="cannot read checkpoint " + path):
        load_model(model_copy)


def test_vocab_size_differs_from_tokenizer(model_copy):
    config_path = os.path.join(model_copy, "config.json")
    with open(config_path) as f:
        config = json.load(f)
    vocab = config["vocab_size"]
    import mxnet as mx

    def grow(raw):
        for k in ("_embed.weight", "_logits_proj.weight"):
            raw[k] = mx.nd.zeros((vocab + 8, 64))
    edit_params(model_copy, grow)
    config["vocab_size"] = vocab + 8
    with open(config_path, "w") as f:
        json.dump(config, f)
    with pytest.raises(ModelLoadError) as e:
        load_model(model_copy)
    spiece = glob.glob(os.path.join(model_copy, "*.spiece"))[0]
    assert str(e.value) == "vocabulary mismatch: {} has vocab_size {} but {} has {} pieces".format(
        config_path, vocab + 8, spiece, vocab)


def test_config_disagrees_with_checkpoint(model_copy):
    config_path = os.path.join(model_copy, "config.json")
    with open(config_path) as f:
        config = json.load(f)
    config["n_layer"] = 3
    with open(config_path, "w") as f:
        json.dump(config, f)
    with pytest.raises(ModelLoadError, match=r"missing parameter _attn_ln.2.beta \(expected shape \(64,\)\)"):
        load_model(model_copy)


@pytest.mark.parametrize("content,message", [
    ("{not json", "cannot read model config"),
    ('{"n_head": 0}', "n_head must be a positive integer, got 0"),
    ('{"n_embd": 64, "n_head": 5}', r"n_embd \(64\) must be divisible by n_head \(5\)"),
    ('{"activation_function": "relu"}', "activation_function must be one of gelu, gelu_new, gelu_pytorch_tanh, got 'relu'"),
    ('{"layer_norm_epsilon": -1}', r"layer_norm_epsilon must be in \(0, 1\), got -1"),
    ("[1, 2]", "expected a JSON object, got list"),
])
def test_bad_config_json(model_copy, content, message):
    with open(os.path.join(model_copy, "config.json"), "w") as f:
        f.write(content)
    with pytest.raises(ModelLoadError, match=message):
        load_model(model_copy)


# ---- model directory contents ----

def test_directory_missing(tmp_path):
    missing = str(tmp_path / "nope")
    with pytest.raises(ModelLoadError, match="model directory {} does not exist".format(missing)):
        load_model(missing)


def test_no_params_file(model_copy):
    os.remove(params_file(model_copy))
    with pytest.raises(ModelLoadError) as e:
        load_model(model_copy)
    names = ", ".join(sorted(os.listdir(model_copy)))
    assert str(e.value) == "model directory {} must hold exactly one *.params file, found none: {}".format(
        model_copy, names)


def test_two_spiece_files(model_copy):
    spiece = glob.glob(os.path.join(model_copy, "*.spiece"))[0]
    shutil.copy(spiece, os.path.join(model_copy, "other.spiece"))
    with pytest.raises(ModelLoadError, match=r"exactly one \*.spiece file, found 2: .*other.spiece"):
        load_model(model_copy)


def test_empty_directory(tmp_path):
    with pytest.raises(ModelLoadError, match=r"found none: \(empty\)"):
        load_model(str(tmp_path))


def test_corrupt_spiece(model_copy):
    spiece = glob.glob(os.path.join(model_copy, "*.spiece"))[0]
    with open(spiece, "wb") as f:
        f.write(b"garbage")
    with pytest.raises(ModelLoadError, match="cannot read SentencePiece model " + spiece):
        load_model(model_copy)


def test_a_model_is_written_in_the_checkpoint_order(tmp_path):
    """Weights go into a .params file in the order the network registered them while it had
    GluonNLP's four lists of layers (the tied head last), so a model written then and now has
    the same bytes (the shipped demo model, tests/test_demo_model.py)."""
    import mxnet as mx

    from kogpt2_serving.files.config import GPT2Config
    from kogpt2_serving.model.network import GPT2Model

    model = GPT2Model(GPT2Config(vocab_size=50, n_positions=16, n_embd=32, n_layer=2, n_head=2))
    model.initialize()
    checkpoint.save_params(model, str(tmp_path / "model.params"))
    assert list(mx.nd.load(str(tmp_path / "model.params"))) == (
        ["_embed.weight", "_pos_embed.weight"]
        + ["_self_attention_layers.%d.%s.%s" % (i, linear, p) for i in range(2)
           for linear in ("_multi_head_qkv_proj", "_out_proj") for p in ("weight", "bias")]
        + ["_ffn_layers.%d.%s.%s" % (i, linear, p) for i in range(2)
           for linear in ("_hidden_map", "_out_map") for p in ("weight", "bias")]
        + ["_%s.%d.%s" % (ln, i, p) for ln in ("attn_ln", "ffn_ln") for i in range(2) for p in ("gamma", "beta")]
        + ["_final_ln.gamma", "_final_ln.beta", "_logits_proj.weight"])


def test_the_weight_table_names_exactly_the_networks_parameters():
    """model/weights.py is the one list of names and shapes: its network column must name every
    parameter of GPT2Model exactly once, with the table's shape (a renamed attribute would break
    every reader), and named_weights must key those parameters by the canonical column."""
    from kogpt2_serving.files.config import GPT2Config
    from kogpt2_serving.model.compat import structural_parameters
    from kogpt2_serving.model.network import INT8_SCALE, STEP_WEIGHT, GPT2Model
    from kogpt2_serving.model.weights import TIED, shape_of, weights

    config = GPT2Config(vocab_size=50, n_positions=16, n_embd=32, n_layer=3, n_head=2, n_inner=48)
    model = GPT2Model(config)
    table = weights(config.n_layer)
    own = structural_parameters(model)  # the network's own names
    assert own[TIED[1]] is own[TIED[0]]  # the tied LM head: the embedding under a second name
    derived = ("." + STEP_WEIGHT, "." + INT8_SCALE)  # step kernels and int8 scales: made at load, never stored
    own = {name: p for name, p in own.items() if name != TIED[1] and not name.endswith(derived)}
    assert sorted(w.network for w in table) == sorted(own)  # each once: a sorted list keeps duplicates
    assert {w.network: shape_of(w, config) for w in table} == {name: tuple(p.shape) for name, p in own.items()}
    assert len({id(p) for p in own.values()}) == len(own)
    named = model.named_weights()
    assert set(named) == set(checkpoint.expected_shapes(config)) | {TIED[1]}
    assert all(named[w.canonical] is own[w.network] for w in table) and named[TIED[1]] is named[TIED[0]]
