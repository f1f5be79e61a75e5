"""The kernels of our own (kogpt2_serving.kernels): every instruction-set path this CPU can run,
against a float64 NumPy product over shapes that reach each tiling edge (tests/kernel_check.py);
inside a hybridized graph; with wrong inputs; and refused with the reason on MXNet 1.6."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from kogpt2_serving import kernels
from kogpt2_serving.errors import ModelLoadError
from kogpt2_serving.model import device
from numpy_reference import quantize_activations

CHECK = os.path.join(os.path.dirname(os.path.abspath(__file__)), "kernel_check.py")
UNAVAILABLE = kernels.problem()
needs_kernels = pytest.mark.skipif(bool(UNAVAILABLE), reason=UNAVAILABLE or "kernels run")


def _cpu_runs(isa):
    flags = device.cpu_flags() or ()
    return {"portable": True, "avx2": "avx2" in flags, "avx512": "avx512f" in flags,
            "avx512_vnni": "avx512_vnni" in flags, "amx": "amx" in flags}[isa]


@needs_kernels
@pytest.mark.parametrize("cap, expected", [("portable", "portable"), ("avx2", "avx2"), ("avx512", "avx512"),
                                           ("avx512_vnni", "avx512_vnni"), ("", "amx")])
def test_every_isa_path_matches_a_float64_product(cap, expected):
    if not _cpu_runs(expected):
        pytest.skip("this CPU ({}) cannot run the {} path".format(device.cpu_model(), expected))
    env = dict(os.environ, KOGPT2_KERNEL_ISA=cap)
    env.pop("DNNL_MAX_CPU_ISA", None)
    done = subprocess.run([sys.executable, CHECK], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          universal_newlines=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    lines = done.stdout.splitlines()
    assert lines[0] == expected
    cases = [json.loads(line) for line in lines[1:]]
    kinds = [c["case"] for c in cases]
    packed = expected == "amx"  # int8 weights are held packed there
    assert len(cases) == 33 + (7 if packed else 0)  # 9 shapes x (int8, int8 + bias, f32 + bias), 2 gelu, 4 attention
    assert kinds.count("int8_packed+bias") == (5 if packed else 0)  # steps; packed: 5 products, 2 lookups
    bounded = [c for c in cases if "worst" in c]
    worst = max(bounded, key=lambda c: c["worst"])
    assert worst["worst"] < 1.0, worst  # within the float32 summation bound, every element
    int8 = [c for c in cases if c["case"] in ("int8", "int8+bias")]
    assert max(c["rounding"] for c in int8) <= 1.0  # 8-bit rows: nearest levels, right scales
    assert all(c["equal"] for c in cases if c["case"] in ("lookup_packed", "int8_packed+bias"))  # exact
    digested = int8 + [c for c in cases if c["case"] == "int8+gelu"]  # integer sums, then the same GELU
    DIGESTS[expected] = {(c["case"], tuple(c["shape"])): c["digest"] for c in digested}
    assert all(c["written"] for c in cases if c["case"] == "attention")  # the new column, in place


DIGESTS = {}  # ISA -> {(case, shape): digest of the int8 products' output bytes}


@needs_kernels
def test_int8_products_give_the_same_bytes_on_every_isa():
    """Rows quantized alike and exact integer sums (vpmaddubsw, vpmaddwd, vpdpbusd, AMX tiles or plain C),
    and a GELU without FMAs in any vector width: the same output, bit for bit, whichever path this
    CPU and its caps run (needs the checks above to have run in this session)."""
    if len(DIGESTS) < 2:
        pytest.skip("fewer than two ISA paths were checked in this run: {}".format(sorted(DIGESTS) or "none"))
    first, *others = sorted(DIGESTS.items())
    for isa, digests in others:
        assert digests == first[1], (first[0], isa)


@needs_kernels
def test_dnnl_cap_applies_to_the_kernels_too():
    if not _cpu_runs("avx2"):
        pytest.skip("this CPU has no AVX2")
    env = dict(os.environ, DNNL_MAX_CPU_ISA="AVX2")
    env.pop("KOGPT2_KERNEL_ISA", None)
    code = "from kogpt2_serving import kernels; print(kernels.isa())"
    assert subprocess.check_output([sys.executable, "-c", code], env=env, universal_newlines=True).strip() == "avx2"


@needs_kernels
def test_the_operator_runs_inside_a_hybridized_graph():
    import mxnet as mx
    from mxnet import gluon

    kernels.load()

    class Int8Dense(gluon.HybridBlock):
        def __init__(self, weight, scale):
            super().__init__()
            self.weight = self.params.get("weight", shape=weight.shape, dtype="int8", grad_req="null",
                                          init="zeros")
            self.scale = self.params.get("scale", shape=scale.shape, grad_req="null")

        def hybrid_forward(self, F, x, weight, scale):
            return F.kogpt2_linear_int8(x, weight, scale, no_bias=True)  # (B, T, M)

    rng = np.random.default_rng(1)
    w = rng.integers(-127, 128, (24, 40)).astype("int8")
    scale = rng.random(24).astype("float32")
    block = Int8Dense(w, scale)
    block.initialize()
    block.weight.set_data(mx.nd.array(w, dtype="int8"))
    block.scale.set_data(mx.nd.array(scale))
    block.hybridize(static_alloc=True)
    x = rng.standard_normal((2, 3, 40)).astype("float32")
    for _ in range(2):  # traced, then the cached graph
        out = block(mx.nd.array(x)).asnumpy()
        assert out.shape == (2, 3, 24)
        np.testing.assert_allclose(out, int8_reference(x.reshape(6, 40), w, scale).reshape(2, 3, 24),
                                   rtol=1e-4, atol=1e-4)


def int8_reference(x, w, scale):
    """x (N, K) . (w * scale)^T in float64, x quantized per row first (as the kernels do)."""
    q, q_scale = quantize_activations(x)
    return (q * q_scale) @ w.T.astype("float64") * scale


@needs_kernels
@pytest.mark.parametrize("weight_dtype, x_cols, message", [
    ("float32", 40, "input 1 has dtype 0, expected 5"),
    ("int8", 41, "disagree on K"),
])
def test_wrong_inputs_are_refused_with_the_reason(weight_dtype, x_cols, message):
    import mxnet as mx

    kernels.load()
    with pytest.raises(mx.base.MXNetError, match=message):
        mx.nd.kogpt2_linear_int8(mx.nd.ones((1, x_cols)), mx.nd.ones((8, 40), dtype=weight_dtype),
                                 mx.nd.ones((8,)), no_bias=True).wait_to_read()


def product_op(mx, product, x, w, scale, bias):
    """(kogpt2_linear_<product>, its inputs) over x, int8 weights w (float32: w * 0.01), scale
    (not for float32) and bias; int8_packed is skipped where this process does not pack."""
    kernels.load()
    if product == "int8_packed" and not kernels.packs_int8():
        pytest.skip("packed int8 weights need AMX; this process runs {}".format(kernels.isa()))
    inputs = {"int8": [x, mx.nd.array(w, dtype="int8"), scale, bias],
              "f32": [x, mx.nd.array(w.astype("float32") * 0.01), bias],
              "int8_packed": [x, mx.nd.array(kernels.pack_int8(w), dtype="int8"), scale, bias]}[product]
    return getattr(mx.nd, "kogpt2_linear_" + product), inputs


@needs_kernels
@pytest.mark.parametrize("product", ["int8", "f32", "int8_packed"])
def test_a_residual_input_is_added_to_the_output_exactly(product):
    """residual=True adds a last input (..., M) to the output as it is written: bit for bit what
    adding it afterwards gives (the decode step's residual adds, model/network.py)."""
    import mxnet as mx

    rng = np.random.default_rng(3)
    x = mx.nd.array(rng.standard_normal((2, 3, 64)).astype("float32"))
    w = rng.integers(-127, 128, (32, 64)).astype("int8")
    scale, bias = (mx.nd.array(rng.random(32).astype("float32")) for _ in range(2))
    residual = mx.nd.array(rng.standard_normal((2, 3, 32)).astype("float32"))
    op, inputs = product_op(mx, product, x, w, scale, bias)
    plain = op(*inputs).asnumpy()
    added = op(*(inputs + [residual]), residual=True).asnumpy()
    assert np.array_equal(added, (mx.nd.array(plain) + residual).asnumpy())
    assert not np.array_equal(added, plain)
    without_bias = op(*(inputs[:-1] + [residual]), no_bias=True, residual=True).asnumpy()
    assert np.array_equal(without_bias, (op(*inputs[:-1], no_bias=True) + residual).asnumpy())
    with pytest.raises(mx.base.MXNetError, match="input 4 \\(the residual\\) must have the output's shape|"
                                                 "input 3 \\(the residual\\) must have the output's shape"):
        op(*(inputs + [mx.nd.ones((2, 3, 31))]), residual=True).wait_to_read()


def gelu64(v):
    """GELU, erf form, in float64 (math.erf): what MXNet's LeakyReLU gelu computes."""
    import math

    return 0.5 * v * (1 + np.vectorize(math.erf)(v / math.sqrt(2)))


@needs_kernels
@pytest.mark.parametrize("product", ["int8", "f32", "int8_packed"])
def test_gelu_applies_to_the_output_and_is_refused_with_a_residual(product):
    """activation="gelu": the output is GELU(x . w^T + bias), within 1e-6 of float64's erf GELU
    of the operator's own plain output, over negative, small and large values (x/sqrt 2 past the
    tails of the erf polynomial); another activation, or one with residual=True, is refused."""
    import mxnet as mx

    rng = np.random.default_rng(4)
    x = mx.nd.array(rng.standard_normal((3, 5, 64)).astype("float32"))
    w = rng.integers(-127, 128, (48, 64)).astype("int8")
    scale = mx.nd.array((rng.random(48) * 0.02).astype("float32"))
    bias = mx.nd.array(np.linspace(-12, 12, 48).astype("float32"))  # outputs from about -14 to 14
    op, inputs = product_op(mx, product, x, w, scale, bias)
    plain = op(*inputs).asnumpy().astype("float64")
    assert plain.min() < -8 and plain.max() > 8 and (np.abs(plain) < 0.5).any()
    activated = op(*inputs, activation="gelu").asnumpy()
    error = np.abs(activated - gelu64(plain)) / np.maximum(1, np.abs(plain))
    assert error.max() < 1e-6, error.max()
    assert np.array_equal(op(*inputs, activation="").asnumpy(), plain.astype("float32"))
    with pytest.raises(mx.base.MXNetError, match="activation must be 'gelu' or absent, got 'tanh'"):
        op(*inputs, activation="tanh").wait_to_read()
    residual = mx.nd.ones((3, 5, 48))
    with pytest.raises(mx.base.MXNetError, match="activation='gelu' and residual=True cannot be combined"):
        op(*(inputs + [residual]), activation="gelu", residual=True).wait_to_read()


@needs_kernels
@pytest.mark.parametrize("shapes, attrs, message", [
    ([(2, 96), (2, 5), (1, 64, 5), (1, 40, 16), (1,)], {"num_heads": 4}, "values must be \\(1, B\\*H\\*C, D\\)"),
    ([(2, 96), (3, 5), (1, 64, 5), (1, 40, 8), (1,)], {"num_heads": 4}, "mask must be \\(B, C\\) with B = 2"),
    ([(2, 96), (2, 5), (1, 64, 6), (1, 40, 8), (1,)], {"num_heads": 4}, "keys must be \\(1, B\\*H\\*D, C\\)"),
    ([(2, 96), (2, 5), (1, 64, 5), (1, 40, 8), (1,)], {"num_heads": 5}, "U a multiple of num_heads 5"),
    ([(2, 96), (2, 5), (1, 64, 5), (1, 40, 8), (1,)], {"num_heads": "x"}, "needs num_heads \\(a positive integer\\)"),
    ([(2, 96), (2, 5), (1, 64, 5), (1, 40, 8), (2,)], {"num_heads": 4}, "slot must be \\(1,\\)"),
    ([(2, 96), (2, 5), (1, 64, 5), (1, 40, 8), 5], {"num_heads": 4}, "slot 5 is outside the cache's 5 slots"),
])
def test_attention_step_refuses_wrong_inputs_with_the_reason(shapes, attrs, message):
    import mxnet as mx

    kernels.load()
    inputs = [mx.nd.ones(shape) for shape in shapes[:4]]
    slot = shapes[4]
    inputs.append(mx.nd.array([slot], dtype="int32") if isinstance(slot, int) else mx.nd.zeros(slot, dtype="int32"))
    with pytest.raises(mx.base.MXNetError, match=message):
        mx.nd.kogpt2_attention_step(*inputs, scale=0.125, **attrs).wait_to_read()


@needs_kernels
def test_packed_weights_are_refused_where_the_kernels_do_not_pack():
    """A process whose kernels run below AMX never packs int8 weights (kernels.packs_int8); handed
    some anyway, the packed operator says why instead of computing garbage."""
    code = ("import mxnet as mx, numpy as np\n"
            "from kogpt2_serving import kernels\n"
            "kernels.load(); assert not kernels.packs_int8()\n"
            "w = mx.nd.array(kernels.pack_int8(np.ones((16, 64), 'int8')), dtype='int8')\n"
            "try:\n"
            "    mx.nd.kogpt2_linear_int8_packed(mx.nd.ones((1, 64)), w, mx.nd.ones((16,)), no_bias=True).wait_to_read()\n"
            "except mx.base.MXNetError as e:\n"
            "    print(e)\n")
    below = [isa for isa in ("avx512_vnni", "avx512", "avx2", "portable") if _cpu_runs(isa)][0]
    env = dict(os.environ, KOGPT2_KERNEL_ISA=below)
    out = subprocess.check_output([sys.executable, "-c", code], env=env, universal_newlines=True,
                                  stderr=subprocess.STDOUT)
    assert "packed int8 weights need AMX, which this process does not run (kernels ISA {})".format(below) in out


@needs_kernels
@pytest.mark.parametrize("weight, x_cols, message", [
    ((20, 64), 64, "a packed weight is \\(M, K\\) with M a multiple of 16 and K of 64"),
    ((16, 64), 65, "kogpt2_linear_int8_packed: x \\(..., K\\) and weight \\(M, K\\) disagree on K"),
])
def test_packed_product_refuses_shapes_with_the_reason(weight, x_cols, message):
    import mxnet as mx

    kernels.load()
    with pytest.raises(mx.base.MXNetError, match=message):
        mx.nd.kogpt2_linear_int8_packed(mx.nd.ones((1, x_cols)), mx.nd.ones(weight, dtype="int8"),
                                        mx.nd.ones((weight[0],)), no_bias=True).wait_to_read()


def test_mxnet_without_the_extension_api_is_refused_by_name(monkeypatch):
    import mxnet as mx

    kernels._loaded.clear()
    monkeypatch.setattr(mx, "__version__", "1.6.0")
    assert kernels.problem() == "MXNet 1.6.0 has no extension API for operators (MXNet 1.7 added it)"
    with pytest.raises(ModelLoadError, match="cannot run here: MXNet 1.6.0 has no extension API"):
        kernels.load()


@needs_kernels
def test_a_failed_build_names_the_source_and_the_compiler_error(tmp_path, monkeypatch):
    bad = tmp_path / "linear.cc"
    bad.write_text("this is not C++\n")
    monkeypatch.setattr(kernels, "SOURCES", [str(bad)] + kernels.SOURCES[1:])
    monkeypatch.setenv(kernels.CACHE_ENV, str(tmp_path / "cache"))
    kernels._loaded.clear()
    with pytest.raises(ModelLoadError, match="building the kogpt2 kernels from .*linear.cc.* failed") as e:
        kernels.load()
    assert "error" in str(e.value) and str(bad) in str(e.value)  # the compiler's line naming the file
    assert os.listdir(str(tmp_path / "cache")) == []  # no half-built library left to load later
    monkeypatch.setenv(kernels.COMPILER_ENV, str(tmp_path / "no-such-compiler"))
    with pytest.raises(ModelLoadError, match="needs a C\\+\\+ compiler .*no-such-compiler"):
        kernels.load()
