"""What this CPU and MXNet can run (device.capabilities), and that a dtype the machine cannot
run is refused at start-up, by every entry point, with the missing feature and the alternative.

The refusal is checked for real where bfloat16 products cannot run (the DNNL_MAX_CPU_ISA=AVX2
leg of `make test`, AVX2-only CPUs, MXNet 1.6) and, everywhere, with the capabilities replaced by
those of such a machine."""
import pytest

from kogpt2_serving.model import device
from kogpt2_serving.cli import main
from kogpt2_serving.errors import ModelLoadError

AMD_FLAGS = "fpu sse sse2 ssse3 sse4_1 sse4_2 avx f16c fma avx2 bmi2 sha_ni"
SAPPHIRE_RAPIDS_FLAGS = AMD_FLAGS + " avx512f avx512bw avx512vl avx512_vnni avx512_bf16 amx_bf16 amx_tile amx_int8"
NO_AVX512 = "this CPU (AMD EPYC 7R13 Processor) has no AVX-512, which oneDNN's bfloat16 kernels need (AVX512-BF16 " \
            "runs them natively)"


def fake_cpuinfo(tmp_path, monkeypatch, model, flags):
    path = tmp_path / "cpuinfo"
    path.write_text("processor\t: 0\nmodel name\t: {}\nflags\t\t: {}\n\nprocessor\t: 1\n".format(model, flags))
    monkeypatch.setattr(device, "CPUINFO", str(path))


def test_capabilities_are_detected_once_and_describe_this_process(capabilities):
    import mxnet as mx

    assert device.capabilities() is capabilities
    assert capabilities.mxnet_version == mx.__version__
    assert set(capabilities.cpu_flags or ()) <= set(device.ISA_FLAGS)
    assert capabilities.bfloat16 == (capabilities.bfloat16_problem == "")
    described = capabilities.as_dict()
    assert described["bfloat16"] == capabilities.bfloat16 and described["mxnet_version"] == mx.__version__
    assert capabilities.mxnet_version in capabilities.summary()


@pytest.mark.parametrize("flags, expected", [
    (AMD_FLAGS, ("avx2",)),
    (SAPPHIRE_RAPIDS_FLAGS, ("avx2", "avx512f", "avx512_vnni", "avx512_bf16", "amx")),
    ("fpu sse sse2", ()),
])
def test_cpu_flags_keep_the_isa_flags_that_decide_kernels(tmp_path, monkeypatch, flags, expected):
    fake_cpuinfo(tmp_path, monkeypatch, "Some CPU", flags)
    assert device.cpu_flags() == expected
    assert device.cpu_model() == "Some CPU"


def test_without_cpuinfo_the_flags_are_unknown_not_empty(tmp_path, monkeypatch):
    monkeypatch.setattr(device, "CPUINFO", str(tmp_path / "missing"))
    assert device.cpu_flags() is None
    assert device.cpu_model()  # platform's name, or "unknown CPU"


def test_isa_cap_comes_from_onednns_variables(monkeypatch, caplog):
    for name in device.ISA_CAP_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    assert device.isa_cap() == ""
    monkeypatch.setenv("MKLDNN_MAX_CPU_ISA", "AVX512_CORE")
    assert device.isa_cap() == "MKLDNN_MAX_CPU_ISA=AVX512_CORE"
    monkeypatch.setenv("DNNL_MAX_CPU_ISA", "AVX2")  # oneDNN reads DNNL_ first
    assert device.isa_cap() == "DNNL_MAX_CPU_ISA=AVX2"
    monkeypatch.setenv("DNNL_MAX_CPU_ISA", "avx2")
    assert device.isa_cap() == "DNNL_MAX_CPU_ISA=avx2"
    assert "is not one of oneDNN's ISA names" in caplog.text  # oneDNN ignores lower case


@pytest.fixture
def product_fails(monkeypatch):
    """A machine whose MXNet has the type and oneDNN but cannot run the product."""
    monkeypatch.setattr(device, "_bfloat16_type_exists", lambda: True)
    monkeypatch.setattr(device, "_bfloat16_product_error", lambda: "MXNetError: could not create a primitive")


def test_bfloat16_problem_names_the_missing_piece(product_fails, tmp_path, monkeypatch):
    fake_cpuinfo(tmp_path, monkeypatch, "AMD EPYC 7R13 Processor", AMD_FLAGS)
    features = ("MKLDNN", "OPENMP")
    assert device.bfloat16_problem("1.9.1", features, ("avx2",), "") == NO_AVX512
    assert device.bfloat16_problem("1.9.1", features, device.ISA_FLAGS, "DNNL_MAX_CPU_ISA=AVX2") == \
        "DNNL_MAX_CPU_ISA=AVX2 caps oneDNN below AVX-512, and its bfloat16 kernels need AVX-512"
    assert device.bfloat16_problem("1.9.1", features, device.ISA_FLAGS, "") == \
        "MXNet 1.9.1 failed a bfloat16 product (MXNetError: could not create a primitive)"
    assert device.bfloat16_problem("1.9.1", ("OPENMP",), device.ISA_FLAGS, "") == \
        "this MXNet 1.9.1 build has no oneDNN (MKLDNN), which runs bfloat16 products"
    monkeypatch.setattr(device, "_bfloat16_type_exists", lambda: False)
    assert device.bfloat16_problem("1.6.0", features, device.ISA_FLAGS, "") == \
        "MXNet 1.6.0 has no bfloat16 type (MXNet 1.8 added it)"


def test_bfloat16_problem_is_empty_when_the_product_runs(monkeypatch):
    monkeypatch.setattr(device, "_bfloat16_type_exists", lambda: True)
    monkeypatch.setattr(device, "_bfloat16_product_error", lambda: "")
    assert device.bfloat16_problem("1.9.1", ("MKLDNN",), ("avx2",), "DNNL_MAX_CPU_ISA=AVX2") == ""


def test_the_probe_agrees_with_loading_a_bfloat16_model(capabilities, tiny_model_dir):
    """capabilities() decides by running a product; loading a model must agree with it."""
    from kogpt2_serving.files.loader import load_model

    if capabilities.bfloat16:
        assert load_model(tiny_model_dir, device="cpu", dtype="bfloat16").dtype == "bfloat16"
    else:
        with pytest.raises(ModelLoadError, match="^bfloat16 weights cannot run here: .*; use float32 instead"):
            load_model(tiny_model_dir, device="cpu", dtype="bfloat16")


# ---- every entry point refuses at start-up ----

REFUSAL = "error: bfloat16 weights cannot run here: {}; use float32 instead (--dtype float32, or " \
          "KOGPT2_DTYPE=float32 for a server's workers)"


@pytest.fixture
def no_bfloat16(monkeypatch):
    """This machine as an AVX2-only one: what capabilities() reports there."""
    caps = device.capabilities()._replace(bfloat16_problem=NO_AVX512)
    monkeypatch.setattr(device, "capabilities", lambda: caps)
    return caps


def refusals(model_dir, monkeypatch, capsys):
    """stderr of generate --dtype, serve --dtype and serve with KOGPT2_DTYPE, each refused."""
    texts = []
    for argv, env in ((["generate", "a", "--model-dir", model_dir, "--dtype", "bfloat16"], None),
                      (["serve", "--model-dir", model_dir, "--dtype", "bfloat16"], None),
                      (["serve", "--model-dir", model_dir], "bfloat16")):
        if env:
            monkeypatch.setenv("KOGPT2_DTYPE", env)
        assert main(argv) == 1, argv  # before any server starts: serve would block otherwise
        texts.append(capsys.readouterr().err)
    return texts


def test_bfloat16_is_refused_at_start_up_with_the_feature_and_the_alternative(no_bfloat16, tiny_model_dir,
                                                                              monkeypatch, capsys):
    for text in refusals(tiny_model_dir, monkeypatch, capsys):
        assert REFUSAL.format(NO_AVX512) in text


@pytest.mark.without_bfloat16
def test_bfloat16_is_refused_for_real_where_it_cannot_run(capabilities, tiny_model_dir, monkeypatch, capsys):
    for text in refusals(tiny_model_dir, monkeypatch, capsys):
        assert REFUSAL.format(capabilities.bfloat16_problem) in text


def test_a_workers_kogpt2_dtype_is_refused_when_it_loads(no_bfloat16, tiny_model_dir, monkeypatch):
    """The handler (a worker, or the stock toolkit's model_fn) reads KOGPT2_DTYPE itself."""
    from kogpt2_serving import handler

    monkeypatch.setenv("KOGPT2_DTYPE", "bfloat16")
    with pytest.raises(ModelLoadError, match=r"^bfloat16 weights cannot run here: this CPU \(AMD EPYC"):
        handler.model_fn(tiny_model_dir)


def test_float32_needs_no_check_and_no_mxnet_in_the_launcher(monkeypatch):
    monkeypatch.setattr(device, "capabilities", lambda: pytest.fail("capabilities() called for float32"))
    device.check_dtype_runs("float32", "auto")
