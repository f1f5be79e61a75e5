"""scripts/train_demo_model.py's training loop, on a tiny model and a synthetic corpus: the
attention's queries and keys must survive training.

The first shipped demo model came out of this loop with every query and key weight at 0.0:
MXNet's Adam `wd` (an L2 term added to the gradient before Adam's normalisation) outweighed
their small loss gradient and pulled them to zero at about `lr` per step. Here that shows as
the rows shrinking to a tenth of their initial size within 60 steps."""
import argparse
import importlib.util
import os

import numpy as np
import pytest

SCRIPT = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "scripts", "train_demo_model.py")
INIT_MEAN_ABS = 0.02 * np.sqrt(2 / np.pi)  # E|w| under the script's Normal(0.02) initialisation


@pytest.fixture(scope="module")
def script():
    spec = importlib.util.spec_from_file_location("train_demo_model", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def repeated_segments(vocab, segments, length, seed):
    """<s> a b c ... a b c ... </s> lines: the second half is predictable only by attending."""
    rng = np.random.RandomState(seed)
    ids = []
    for _ in range(segments):
        segment = list(rng.randint(4, vocab, size=length))
        ids += [1] + segment + segment + [2]
    return ids


def test_queries_and_keys_survive_training(script):
    import mxnet as mx

    args = argparse.Namespace(n_embd=128, n_layer=2, n_positions=32, window=32, batch=8, steps=60,
                              lr=2e-3, wd=0.01, seed=5)
    mx.random.seed(args.seed)
    config, model, _, _ = script.train(args, 64, repeated_segments(64, 200, 8, seed=5))
    assert config.n_head == 2
    weights = model.named_weights()
    u = config.n_embd
    for i in range(config.n_layer):
        w = weights["_self_attention_layers.%d._multi_head_qkv_proj.weight" % i].data().asnumpy()
        q, k, v = np.abs(w[:u]).mean(), np.abs(w[u:2 * u]).mean(), np.abs(w[2 * u:]).mean()
        # Under Adam's coupled wd layer 0's fell to 0.0014 and 0.0012 here (v: 0.013); with
        # decoupled decay they grow (0.019, 0.019).
        assert q > 0.8 * INIT_MEAN_ABS and k > 0.8 * INIT_MEAN_ABS, (i, q, k, v)



# A 2-layer GPT2Model's parameters in the order the network registered them when the shipped
# demo model was trained (model.collect_params(), in structural names), the order its random
# initial weights were drawn in.
OLD_REGISTRATION_ORDER = (
    ["_embed.weight", "_pos_embed.weight"]
    + ["_self_attention_layers.%d.%s.%s" % (i, linear, p) for i in range(2)
       for linear in ("_multi_head_qkv_proj", "_out_proj") for p in ("weight", "bias", "step_weight")]
    + ["_ffn_layers.%d.%s.%s" % (i, linear, p) for i in range(2)
       for linear in ("_hidden_map", "_out_map") for p in ("weight", "bias", "step_weight")]
    + ["_%s.%d.%s" % (ln, i, p) for ln in ("attn_ln", "ffn_ln") for i in range(2) for p in ("gamma", "beta")]
    + ["_final_ln.gamma", "_final_ln.beta", "_logits_proj.step_weight"])


def test_initialization_draws_in_the_old_registration_order(script):
    """The same --seed must keep giving the shipped model's initial weights, whatever order the
    network registers its parameters in now."""
    import mxnet as mx

    from kogpt2_serving.files.config import GPT2Config
    from kogpt2_serving.model.compat import structural_parameters
    from kogpt2_serving.model.network import GPT2Model

    order = script.registration_order(2)
    assert [canonical for canonical, _ in order] == OLD_REGISTRATION_ORDER
    model = GPT2Model(GPT2Config(vocab_size=50, n_positions=16, n_embd=32, n_layer=2, n_head=2))
    mx.random.seed(3)
    script.initialize(model, mx.init.Normal(0.02))
    own = structural_parameters(model)
    # Normal fills weights (step kernels included) with one draw each, in turn; biases, gammas and
    # betas are constants and draw nothing.
    mx.random.seed(3)
    for _, name in order:
        param = own[name]
        if name.endswith("weight"):
            expected = mx.nd.random.normal(0, 0.02, shape=param.shape).asnumpy()
        else:
            expected = np.full(param.shape, 1.0 if name.endswith(".gamma") else 0.0, dtype="float32")
        np.testing.assert_array_equal(param.data().asnumpy(), expected, err_msg=name)
