"""int8 weights (--dtype int8): what is quantized and how, that it is held once, that the model
computes exactly what its quantized weights define, how far that is from float32, and the
refusals where the kernels cannot run (MXNet 1.6, a GPU)."""
import glob
import io
import os

import mxnet as mx
import numpy as np
import pytest

from kogpt2_serving import kernels
from kogpt2_serving.errors import ModelLoadError
from kogpt2_serving.files.default_model import DEMO_MODEL_DIR
from kogpt2_serving.files.loader import load_model
from kogpt2_serving.model.device import choose_dtype
from kogpt2_serving.model.int8_weights import quantized
from kogpt2_serving.model.network import Linear, Lookup, blocks
from kogpt2_serving.testing import make_test_model
from generation_checks import check_every_strategy
from numpy_reference import (forward, int8_activations_dense, int8_table, load_numpy_params,
                             quantize_rows)

UNAVAILABLE = kernels.problem()
needs_kernels = pytest.mark.skipif(bool(UNAVAILABLE), reason=UNAVAILABLE or "kernels run")
PROMPTS = ["대한민국은 민주공화국이다.", "아기 공룡 둘리는 희동이와"]
N_LAYER, N_HEAD = 3, 4
WINDOW = 128  # the window the demo model was trained and scored with (its metrics.json)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return make_test_model(str(tmp_path_factory.mktemp("int8")), n_embd=64, n_head=N_HEAD, n_layer=N_LAYER, seed=7)


@pytest.fixture(scope="module")
def int8_model(model_dir):
    return load_model(model_dir, device="cpu", dtype="int8")


@pytest.fixture(scope="module")
def numpy_params(model_dir):
    return load_numpy_params(glob.glob(os.path.join(model_dir, "*.params"))[0])


def test_quantization_is_symmetric_per_row_and_rounds_to_nearest():
    rng = np.random.RandomState(0)
    w = (rng.randn(37, 50) * rng.rand(37, 1)).astype(np.float32)  # rows of different ranges
    w[3] = 0  # an all-zero row
    w[5, 7] = -4.0  # a row whose largest magnitude is negative
    values, scale = (a.asnumpy() for a in quantized(mx.nd.array(w)))
    expected_values, expected_scale = quantize_rows(w)
    assert values.dtype == np.int8 and scale.dtype == np.float32
    np.testing.assert_array_equal(values, expected_values)
    np.testing.assert_array_equal(scale, expected_scale)
    assert scale[3] == 1 and not values[3].any()
    assert values[5, 7] == -127
    nonzero = np.arange(37) != 3
    assert (np.abs(values[nonzero]).max(axis=1) == 127).all()  # every row uses the whole range
    error = np.abs(w - values * scale[:, None])
    assert (error <= scale[:, None] * 0.5 * (1 + 1e-6)).all()  # nearest level, not truncated


@needs_kernels
def test_weights_are_int8_once_and_the_rest_float32(int8_model):
    model = int8_model.engine.model
    linears = blocks(model, Linear)
    assert len(linears) == 4 * N_LAYER + 1
    for linear in linears:
        n, k = linear.weight.shape
        assert linear.int8 and linear.weight.data().dtype == np.int8
        # packed in place on AMX CPUs; the test model's shapes (64 units, vocabulary 400) all fit
        assert linear.int8_packed == kernels.packs_int8()
        assert linear.weight_scale.data().shape == (n,) and linear.weight_scale.data().dtype == np.float32
        assert linear.step_weight._data is None  # no second copy for the steps
        if linear.bias is not None:
            assert linear.bias.data().dtype == np.float32
    tokens, positions = blocks(model, Lookup)
    assert tokens.int8 and tokens.weight is model._logits_proj.weight  # the tied table, quantized once
    assert tokens.int8_packed == model._logits_proj.int8_packed  # and read as it is held
    assert tokens.weight_scale is model._logits_proj.weight_scale
    assert not positions.int8 and positions.weight.data().dtype == np.float32
    allocated = [p.data() for p in model.collect_params().values() if p._data]
    held = sum(a.size * np.dtype(a.dtype).itemsize for a in allocated)
    matrices = sum(linear.weight.shape[0] * linear.weight.shape[1] for linear in linears)  # the head's is the table
    assert held == sum(a.size * 4 for a in allocated) - 3 * matrices  # matrices in 1 byte, nothing else changed
    assert int8_model.dtype == "int8" and int8_model.engine.dtype == "float32"


@needs_kernels
def test_logits_equal_the_numpy_reference_over_the_quantized_weights(int8_model, numpy_params):
    """The full pass, the cached prefill and two steps all compute the network over the
    dequantized weights (the NumPy reference quantizes from the definition, sums in float64)
    and each product's input rows quantized to 8 bits: float32 rounding apart. The same logits are measurably not float32's: quantization did happen,
    and by about as much as 8 bits give."""
    engine = int8_model.engine
    def reference(ids):
        return forward(numpy_params, np.array(ids), N_LAYER, N_HEAD, linear=int8_activations_dense,
                       token_table=int8_table)

    for prompt in PROMPTS:
        ids = int8_model.tokenizer.encode_prompt(prompt)
        expected = reference(ids)
        bound = 2e-5 * np.abs(expected).max()
        assert np.abs(engine.full_logits([ids])[0] - expected).max() <= bound
        state, last = engine.start([ids], 4)
        assert np.abs(last[0] - expected[-1]).max() <= bound
        fed = list(ids)
        for token in (5, 77):
            fed.append(token)
            last = engine.step(state, [token])
            assert np.abs(last[0] - reference(fed)[-1]).max() <= bound
        float32 = forward(numpy_params, np.array(ids), N_LAYER, N_HEAD)
        assert 1e-4 < np.abs(expected - float32).max() < 0.05 * np.abs(float32).max()


@needs_kernels
def test_a_padded_batch_gives_each_row_its_own_logits(int8_model):
    """Rows of different lengths share steps (left padding, masked slots) as in float32."""
    engine = int8_model.engine
    prompts = [int8_model.tokenizer.encode_prompt(p) for p in PROMPTS]
    state, last = engine.start(prompts, 3)
    alone = [engine.start([ids], 3) for ids in prompts]
    for row, (one_state, one_last) in enumerate(alone):
        assert np.abs(last[row] - one_last[0]).max() <= 1e-4
    stepped = engine.step(state, [11, 12])
    for row, (one_state, _) in enumerate(alone):
        assert np.abs(stepped[row] - engine.step(one_state, [11 + row])[0]).max() <= 1e-4


@needs_kernels
def test_generation_runs_every_strategy(int8_model):
    check_every_strategy(int8_model, PROMPTS)


@needs_kernels
def test_demo_model_perplexity_in_int8_is_within_2_percent_of_float32():
    """Issue 17's accuracy target on real (trained) weights: the held-out lines of the shipped
    model. Random weights say little about quantization error; trained ones do."""
    from kogpt2_serving.generation.perplexity import model_nll

    with io.open(os.path.join(DEMO_MODEL_DIR, "heldout.txt"), encoding="utf-8") as f:
        lines = [line for line in f.read().splitlines() if line]
    perplexity = {}
    for dtype in ("float32", "int8"):
        loaded = load_model(DEMO_MODEL_DIR, device="cpu", dtype=dtype)
        tok = loaded.tokenizer
        ids = [i for line in lines for i in [tok.bos_id] + tok.encode(line) + [tok.eos_id]]
        perplexity[dtype] = np.exp(model_nll(loaded.engine, ids, WINDOW)[0])
    assert perplexity["int8"] != perplexity["float32"]
    assert abs(perplexity["int8"] / perplexity["float32"] - 1) < 0.02, perplexity


def test_a_gpu_is_refused_naming_the_alternative():
    with pytest.raises(ModelLoadError, match=r"^int8 weights are only supported on a CPU \(their kernels are CPU "
                                             r"code\); use float16 on gpu\(0\)$"):
        choose_dtype(mx.gpu(0), "int8")


def test_an_mxnet_without_the_extension_api_is_refused_at_load(monkeypatch):
    """Whatever kernels.problem() found (on MXNet 1.6: no extension API), the error names it
    and the alternative, before any weight is read."""
    monkeypatch.setattr(kernels, "problem", lambda: "MXNet 1.6.0 has no extension API for operators "
                                                    "(MXNet 1.7 added it)")
    with pytest.raises(ModelLoadError, match=r"^int8 weights cannot run here: MXNet 1\.6\.0 has no extension API "
                                             r"for operators \(MXNet 1\.7 added it\); use float32 instead "
                                             r"\(--dtype float32, or KOGPT2_DTYPE=float32 for a server's workers\)$"):
        choose_dtype(mx.cpu(), "int8")


@pytest.mark.skipif(not UNAVAILABLE, reason="the kernels run on this MXNet")
def test_loading_int8_where_the_kernels_cannot_run_fails_with_the_reason(model_dir):
    with pytest.raises(ModelLoadError, match="^int8 weights cannot run here: " + UNAVAILABLE.replace(".", r"\.")
                       .replace("(", r"\(").replace(")", r"\)")):
        load_model(model_dir, device="cpu", dtype="int8")


@pytest.mark.skipif(not UNAVAILABLE, reason="the kernels run on this MXNet")
def test_serve_refuses_int8_before_starting_where_the_kernels_cannot_run(model_dir, capsys):
    """On MXNet 1.6 (the images' MXNet) `serve --dtype int8` stops in the launcher, naming why."""
    from kogpt2_serving.cli.main import main

    assert main(["serve", "--model-dir", model_dir, "--dtype", "int8"]) == 1
    assert "error: int8 weights cannot run here: " + UNAVAILABLE in capsys.readouterr().err
