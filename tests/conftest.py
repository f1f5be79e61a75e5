"""Shared fixtures: tiny real KoGPT2-format model directories, built once per session; and
the markers that tie tests to what this machine can run (kogpt2_serving.model.device.capabilities).

- ``@pytest.mark.requires_bfloat16``: the test runs bfloat16 products; skipped, with the reason
  naming the missing CPU feature or MXNet piece, where they cannot run (AVX2-only CPUs,
  DNNL_MAX_CPU_ISA=AVX2, MXNet < 1.8).
- ``@pytest.mark.without_bfloat16``: the test checks the refusal; it runs only there.
- ``@pytest.mark.serves``: starts a real server; the MXNet 1.6 leg of `make test` leaves these
  out (its venv has no Multi Model Server).
"""
import pytest

from kogpt2_serving.model.device import configure_threads

configure_threads()  # before MXNet is imported by any test module


def pytest_configure(config):
    config.addinivalue_line("markers", "requires_bfloat16: needs a CPU and MXNet that run bfloat16 products")
    config.addinivalue_line("markers", "without_bfloat16: checks the refusal where bfloat16 products cannot run")
    config.addinivalue_line("markers", "serves: starts a real server (Multi Model Server, a JVM) through .venv")


def pytest_collection_modifyitems(config, items):
    """Detect the capabilities only when a collected test asks (importing MXNet here is safe:
    the threads are configured above)."""
    marked = [item for item in items if item.get_closest_marker("requires_bfloat16")
              or item.get_closest_marker("without_bfloat16")]
    if not marked:
        return
    from kogpt2_serving.model.device import capabilities

    caps = capabilities()
    for item in marked:
        if item.get_closest_marker("requires_bfloat16") and not caps.bfloat16:
            item.add_marker(pytest.mark.skip(reason="bfloat16 products cannot run here: " + caps.bfloat16_problem))
        if item.get_closest_marker("without_bfloat16") and caps.bfloat16:
            item.add_marker(pytest.mark.skip(reason="bfloat16 runs here ({}); the refusal is checked where it "
                                                    "cannot (e.g. DNNL_MAX_CPU_ISA=AVX2)".format(caps.cpu_model)))


@pytest.fixture(scope="session")
def capabilities():
    from kogpt2_serving.model.device import capabilities

    return capabilities()


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory):
    """2 layers, 64 units, 4 heads (config.json), structural layout."""
    from kogpt2_serving.testing import make_test_model

    return make_test_model(str(tmp_path_factory.mktemp("tiny")), n_embd=64, n_head=4, n_positions=96)


@pytest.fixture(scope="session")
def tiny_model(tiny_model_dir):
    from kogpt2_serving.files.loader import load_model

    return load_model(tiny_model_dir, device="cpu")


@pytest.fixture(scope="session")
def generator(tiny_model):
    from kogpt2_serving.generation.generator import Generator

    return Generator(tiny_model)
