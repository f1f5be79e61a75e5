"""Shared fixtures: tiny real KoGPT2-format model directories, built once per session."""
import pytest

from kogpt2_serving.device import configure_threads

configure_threads()  # before MXNet is imported by any test module


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory):
    """2 layers, 64 units, 4 heads (config.json), structural layout."""
    from kogpt2_serving.testing import make_test_model

    return make_test_model(str(tmp_path_factory.mktemp("tiny")), n_embd=64, n_head=4, n_positions=96)


@pytest.fixture(scope="session")
def tiny_model(tiny_model_dir):
    from kogpt2_serving.loader import load_model

    return load_model(tiny_model_dir, device="cpu")


@pytest.fixture(scope="session")
def generator(tiny_model):
    from kogpt2_serving.generation import Generator

    return Generator(tiny_model)
