"""bfloat16 weights on a CPU: what is stored in bfloat16, how close the logits stay, and the
errors for the combinations that cannot run. Tests that run bfloat16 products are marked
requires_bfloat16 (conftest): skipped, with the missing feature named, where they cannot run;
test_capabilities.py checks the refusal there."""
import glob
import os

import mxnet as mx
import numpy as np
import pytest

from kogpt2_serving.model.device import choose_dtype
from kogpt2_serving.errors import ModelLoadError
from kogpt2_serving.files.loader import load_model
from kogpt2_serving.model.network import BFLOAT16, Linear, store_weights_in_bfloat16
from kogpt2_serving.testing import make_test_model
from generation_checks import check_every_strategy
from numpy_reference import bfloat16_dense, forward, load_numpy_params, round_to_bfloat16

PROMPTS = ["대한민국은 민주공화국이다.", "아기 공룡 둘리는 희동이와"]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return make_test_model(str(tmp_path_factory.mktemp("bf16")), n_embd=64, n_head=4, n_layer=3, seed=7)


@pytest.fixture(scope="module")
def bf16_model(model_dir):
    return load_model(model_dir, device="cpu", dtype="bfloat16")


def bfloat16_linear(rows, seed):
    """A Linear (64 -> 48) with bfloat16 weights and its step kernels, an input of `rows` rows,
    and the emulated bfloat16 product the layer must return."""
    from kogpt2_serving.model.network import fill_step_weights

    rng = np.random.RandomState(seed)
    x, w, b = rng.randn(rows, 64), rng.randn(48, 64) * 0.1, rng.randn(48) * 0.1
    layer = Linear(48, in_units=64)
    layer.initialize()
    layer.weight.set_data(mx.nd.array(w))
    layer.bias.set_data(mx.nd.array(b))
    store_weights_in_bfloat16(layer)
    fill_step_weights(layer)
    expected = bfloat16_dense(x.astype(np.float32), w.astype(np.float32), b.astype(np.float32))
    return layer, mx.nd.array(x), expected


def assert_is_the_bfloat16_product(out, expected):
    """`out` is what a bfloat16 kernel returns for the product `expected` emulates.

    Exact on any kernel: every output is a bfloat16 value (the low 16 bits of its float32 are
    zero), so the result was rounded to bfloat16, not left in float32. Not exact: which bfloat16.
    The kernel sums in float32 in an order of its own (AVX512-BF16, AMX and the emulation on
    AVX512_CORE differ), the reference in float64, so a sum within float32 rounding of a bfloat16
    rounding boundary may round to the neighbour: at most one bfloat16 step (2^-7 of the value's
    binade) apart, and rarely (~1 output in 1,000 here); truncating instead of rounding would
    move about half of them, so 95% must be equal."""
    assert out.dtype == np.float32
    assert not (out.view(np.uint32) & 0xFFFF).any(), "not rounded to bfloat16"
    step = np.spacing(np.abs(expected).astype(np.float32)) * 2 ** 16  # one bfloat16 step at each value
    assert (np.abs(out - expected) <= step).all()
    assert np.mean(out == expected) >= 0.95


@pytest.mark.requires_bfloat16
def test_one_linear_is_a_bfloat16_product():
    """Independent check of the kernel path: bfloat16 input, weights and bias, float32
    accumulation, bfloat16 result, handed back as float32."""
    layer, x, expected = bfloat16_linear(rows=5, seed=0)
    assert_is_the_bfloat16_product(layer(x).asnumpy(), expected)


@pytest.mark.requires_bfloat16
def test_one_linear_step_is_the_same_bfloat16_product():
    """Decode steps run the product as a 1x1 convolution over the step kernel: same rounding."""
    layer, x, expected = bfloat16_linear(rows=3, seed=1)
    assert layer.step_weight.data().dtype == BFLOAT16
    assert_is_the_bfloat16_product(layer.step(mx.nd, x, rows=3).asnumpy(), expected)


@pytest.mark.requires_bfloat16
def test_weights_are_stored_in_bfloat16_and_layer_norms_in_float32(bf16_model):
    params = bf16_model.engine.model.named_weights()
    for name, param in params.items():
        expected = np.float32 if name.endswith(("gamma", "beta")) else BFLOAT16
        assert param.data().dtype == expected, name
    assert params["_logits_proj.weight"] is params["_embed.weight"]  # still tied: one table
    assert bf16_model.dtype == "bfloat16"


@pytest.mark.requires_bfloat16
def test_logits_equal_a_bfloat16_numpy_reference(bf16_model, model_dir):
    """The NumPy reference with every product rounded as a bfloat16 kernel rounds it gives
    the same logits to within 1e-5, and those are within bfloat16 noise of the float32 model's.
    Bit for bit with oneDNN 2.4 capped at AVX512_CORE (emulated), AVX512_CORE_VNNI and
    AVX512_CORE_BF16 alike; 1e-5 leaves room for float32 sums in another order. A kernel that
    rounded one product output to the other bfloat16 neighbour would move logits by ~1e-3 and
    fail here: that is what this test is for."""
    p = load_numpy_params(glob.glob(os.path.join(model_dir, "*.params"))[0])
    for prompt in PROMPTS:
        ids = bf16_model.tokenizer.encode_prompt(prompt)
        ours = bf16_model.engine.full_logits([ids])[0]
        emulated = forward(p, np.array(ids), n_layer=3, n_head=4, linear=bfloat16_dense, table=round_to_bfloat16)
        assert np.abs(ours - emulated).max() <= 1e-5
        state, last = bf16_model.engine.start([ids], 4)  # the cached path agrees with the full pass
        assert np.abs(last[0] - emulated[-1]).max() <= 1e-5
        fed = list(ids)
        for token in (5, 77):  # and so do steps, whose products are convolutions
            fed.append(token)
            last = bf16_model.engine.step(state, [token])
            stepped = forward(p, np.array(fed), n_layer=3, n_head=4, linear=bfloat16_dense, table=round_to_bfloat16)
            assert np.abs(last[0] - stepped[-1]).max() <= 1e-5
        ref = forward(p, np.array(ids), n_layer=3, n_head=4)
        assert 1e-3 < np.abs(ours - ref).max() < 0.05  # logits span about +-10


@pytest.mark.requires_bfloat16
def test_generation_runs_every_strategy(bf16_model):
    check_every_strategy(bf16_model, PROMPTS)


def test_unsupported_combinations_name_the_alternative():
    with pytest.raises(ModelLoadError, match=r"^bfloat16 weights are only supported on a CPU; use float16 on gpu\(0\)$"):
        choose_dtype(mx.gpu(0), "bfloat16")
    with pytest.raises(ModelLoadError, match=r"^float16 is only supported on a GPU; use float32 or bfloat16 on cpu\(0\)$"):
        choose_dtype(mx.cpu(), "float16")
    with pytest.raises(ValueError, match=r"^dtype must be one of float32, float16, bfloat16, int8, got 'int4'$"):
        choose_dtype(mx.cpu(), "int4")


def test_a_machine_without_bfloat16_products_is_refused_at_load(monkeypatch):
    """Whatever the reason capabilities() found, the error names it and the alternative."""
    from kogpt2_serving.model import device

    caps = device.capabilities()._replace(bfloat16_problem="this CPU (Test CPU) has no AVX-512, which oneDNN's "
                                                           "bfloat16 kernels need")
    monkeypatch.setattr(device, "capabilities", lambda: caps)
    with pytest.raises(ModelLoadError, match=r"^bfloat16 weights cannot run here: this CPU \(Test CPU\) has no "
                                             r"AVX-512, which oneDNN's bfloat16 kernels need; use float32 instead "
                                             r"\(--dtype float32, or KOGPT2_DTYPE=float32 for a server's workers\)$"):
        choose_dtype(mx.cpu(), "bfloat16")
