"""The Gluon model against an independent NumPy forward pass, on real checkpoint files."""
import glob
import os

import numpy as np
import pytest

from kogpt2_serving.files.loader import load_model
from kogpt2_serving.testing import make_test_model
from numpy_reference import forward, load_numpy_params

PROMPTS = ["대한민국은 민주공화국이다.", "아기 공룡 둘리는 희동이와", "서울에서 부산까지 기차로 3시간"]


@pytest.mark.parametrize("activation,act", [("gelu", "erf"), ("gelu_new", "tanh")])
def test_logits_match_numpy_reference(tmp_path, activation, act):
    d = make_test_model(str(tmp_path), n_embd=64, n_head=4, n_layer=3, activation=activation, seed=7)
    loaded = load_model(d, device="cpu")
    p = load_numpy_params(glob.glob(os.path.join(d, "*.params"))[0])
    for prompt in PROMPTS:
        ids = loaded.tokenizer.encode_prompt(prompt)
        ours = loaded.engine.full_logits([ids])[0]
        ref = forward(p, np.array(ids), n_layer=3, n_head=4, act=act)
        assert ours.shape == ref.shape == (len(ids), loaded.config.vocab_size)
        assert np.abs(ours - ref).max() <= 1e-4
        # prefill (last position only) agrees with the full pass
        _, last = loaded.engine.start([ids], 4)
        assert np.abs(last[0] - ref[-1]).max() <= 1e-4


def test_erf_and_tanh_gelu_differ(tmp_path):
    """Guards the reference itself: the two activations must give different logits."""
    d = make_test_model(str(tmp_path), n_embd=64, n_head=4)
    p = load_numpy_params(glob.glob(os.path.join(d, "*.params"))[0])
    ids = np.array([1, 10, 20, 30])
    assert np.abs(forward(p, ids, 2, 4, act="erf") - forward(p, ids, 2, 4, act="tanh")).max() > 1e-5


def test_config_inferred_from_shapes_without_config_json(tmp_path):
    d = make_test_model(str(tmp_path), n_embd=128, n_layer=2, n_positions=80, write_config=False)
    loaded = load_model(d, device="cpu")
    c = loaded.config
    assert (c.n_embd, c.n_head, c.n_layer, c.n_positions, c.vocab_size) == (128, 2, 2, 80, loaded.tokenizer.vocab_size)
    p = load_numpy_params(glob.glob(os.path.join(d, "*.params"))[0])
    ids = loaded.tokenizer.encode_prompt(PROMPTS[0])
    ref = forward(p, np.array(ids), n_layer=2, n_head=2)
    assert np.abs(loaded.engine.full_logits([ids])[0] - ref).max() <= 1e-4
