"""The demo model shipped in the package: loads through the normal path, generates the same text
every time, beats the unigram baseline by the margin its model card promises, and is what the
CLI uses when no model directory is given."""
import glob
import io
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

from kogpt2_serving.files.default_model import DEMO_MODEL_DIR, default_model_dir
from kogpt2_serving.files.model_dir import find_model_files
from kogpt2_serving.generation.params import parse_parameters
from numpy_reference import forward, load_numpy_params

QKV = "_self_attention_layers.{}._multi_head_qkv_proj.{}"


@pytest.fixture(scope="module")
def metrics():
    with io.open(os.path.join(DEMO_MODEL_DIR, "metrics.json"), encoding="utf-8") as f:
        return json.load(f)


@pytest.fixture(scope="module")
def demo():
    from kogpt2_serving.files.loader import load_model

    return load_model(DEMO_MODEL_DIR, device="cpu")


@pytest.fixture(scope="module")
def weights():
    """The shipped parameters as stored (float16), in float64."""
    return load_numpy_params(find_model_files(DEMO_MODEL_DIR).params)


@pytest.fixture(scope="module")
def heldout_ids(demo):
    """A prompt the model has not seen: the first held-out article ("제36조 ① 혼인과 ...") of
    at least 32 tokens."""
    with io.open(os.path.join(DEMO_MODEL_DIR, "heldout.txt"), encoding="utf-8") as f:
        articles = [demo.tokenizer.encode_prompt(line) for line in f.read().splitlines() if line.startswith("제")]
    return next(ids for ids in articles if len(ids) >= 32)


def test_saving_the_loaded_model_writes_the_shipped_file(demo, tmp_path):
    """The train script's writer gives the shipped bytes back (float16 -> float32 -> float16 is
    exact): names, shapes and the order of the weights in the file are what they were when the
    model was trained, whatever the network's own names and order."""
    from kogpt2_serving.files import checkpoint

    path = str(tmp_path / "resaved.params")
    checkpoint.save_params(demo.engine.model, path, layout="deduplicated", float16=True)
    with open(path, "rb") as f, open(find_model_files(DEMO_MODEL_DIR).params, "rb") as shipped:
        assert f.read() == shipped.read()


def test_every_layer_and_head_has_its_own_queries_and_keys(demo, weights):
    """The first demo model's query and key rows were all 0.0 (scripts/train_demo_model.py says why)."""
    c = demo.config
    u, d = c.n_embd, c.head_size
    for i in range(c.n_layer):
        w, b = weights[QKV.format(i, "weight")], weights[QKV.format(i, "bias")]
        for name, rows in (("q", w[:u]), ("k", w[u:2 * u])):
            heads = rows.reshape(c.n_head, d, u)
            for h in range(c.n_head):
                assert np.abs(heads[h]).mean() > 0.01, (i, name, h)  # initialised at 0.016
                for other in range(h):
                    assert np.abs(heads[h] - heads[other]).mean() > 0.02, (i, name, h, other)
        assert np.abs(b[:u]).mean() > 0.01, i  # query bias (the key bias has no gradient: softmax ignores it)


def test_attention_over_a_heldout_line_is_not_uniform(demo, weights, heldout_ids):
    c = demo.config
    attention = []
    logits = forward(weights, np.array(heldout_ids), c.n_layer, c.n_head, attention=attention)
    # The reference computes what the served model computes ...
    assert np.abs(demo.engine.full_logits([heldout_ids])[0] - logits).max() <= 1e-4
    # ... and every head of every layer attends: far from uniform over the causal window, and
    # unlike the layer's other heads. Row 0 has a single key and is left out.
    t = len(heldout_ids)
    uniform = np.tril(np.ones((t, t))) / np.arange(1, t + 1)[:, None]

    def distance(a, b):  # mean total-variation distance between rows of attention weights
        return 0.5 * np.abs(a - b).sum(-1)[1:].mean()

    assert len(attention) == c.n_layer
    for i, layer in enumerate(attention):
        assert layer.shape == (c.n_head, t, t)
        for h in range(c.n_head):
            assert distance(layer[h], uniform) > 0.2, (i, h)
            for other in range(h):
                assert distance(layer[h], layer[other]) > 0.2, (i, h, other)


def with_n_head(tmp_path, n_head):
    """The shipped model loaded from a copy whose config.json says n_head."""
    from kogpt2_serving.files.loader import load_model

    copy = str(tmp_path / "heads{}".format(n_head))
    shutil.copytree(DEMO_MODEL_DIR, copy)
    with io.open(os.path.join(copy, "config.json"), encoding="utf-8") as f:
        config = json.load(f)
    config["n_head"] = n_head
    with io.open(os.path.join(copy, "config.json"), "w", encoding="utf-8") as f:
        json.dump(config, f)
    return load_model(copy, device="cpu")


def test_changing_n_head_changes_the_logits(tmp_path, demo, heldout_ids):
    """With uniform attention (the first demo model) n_head 1, 3 and 4 gave bit-identical logits."""
    shipped = demo.engine.full_logits([heldout_ids])[0]
    copied = with_n_head(tmp_path, demo.config.n_head).engine.full_logits([heldout_ids])[0]
    assert np.array_equal(copied, shipped)  # the copy alone changes nothing
    for n_head in (1, 4):
        logits = with_n_head(tmp_path, n_head).engine.full_logits([heldout_ids])[0]
        assert np.abs(logits - shipped).max() > 1.0, n_head


def test_shipped_in_kogpt2_layout_within_size(demo):
    files = find_model_files(DEMO_MODEL_DIR)
    assert files.format == "kogpt2-v1" and files.config
    import mxnet as mx

    raw = mx.nd.load(files.params)
    assert {v.dtype for v in raw.values()} == {np.float16}  # stored half, cast on load
    assert demo.dtype == "float32" and demo.tokenizer.vocab_size == demo.config.vocab_size
    shipped = sum(os.path.getsize(p) for p in glob.glob(os.path.join(DEMO_MODEL_DIR, "*")))
    assert shipped <= 8 * 2 ** 20


def test_greedy_is_deterministic_and_matches_the_model_card(demo, metrics):
    from kogpt2_serving.generation.generator import Generator

    params = parse_parameters({"max_new_tokens": 40})
    prompts = list(metrics["samples"])
    first = Generator(demo).generate(prompts, params)
    again = Generator(demo).generate(prompts, params)
    assert first == again
    assert {p: p + seqs[0].text for p, seqs in zip(prompts, first)} == metrics["samples"]


def test_heldout_perplexity_beats_unigram_by_the_promised_margin(demo, metrics):
    from kogpt2_serving.generation.perplexity import model_nll, unigram_nll

    with io.open(os.path.join(DEMO_MODEL_DIR, "heldout.txt"), encoding="utf-8") as f:
        lines = [line for line in f.read().splitlines() if line]
    tok = demo.tokenizer
    ids = []
    for line in lines:
        ids += [tok.bos_id] + tok.encode(line) + [tok.eos_id]
    nll, targets = model_nll(demo.engine, ids, metrics["window"])
    unigram = unigram_nll(metrics["unigram_counts"], ids)
    assert targets == metrics["scored_tokens"]
    assert abs(np.exp(nll) - metrics["heldout_perplexity"]) < 0.01 * metrics["heldout_perplexity"]
    assert abs(np.exp(unigram) - metrics["unigram_perplexity"]) < 0.01
    assert np.exp(unigram - nll) >= metrics["promised_margin"] >= 2.0
    with io.open(os.path.join(DEMO_MODEL_DIR, "README.md"), encoding="utf-8") as f:
        assert "at least {:.1f}x lower".format(metrics["promised_margin"]) in f.read()


def test_default_is_the_demo_model_unless_sagemaker_mounts_one(tmp_path, monkeypatch):
    monkeypatch.setenv("SAGEMAKER_BASE_DIR", str(tmp_path))
    assert default_model_dir()[0] == DEMO_MODEL_DIR
    (tmp_path / "model" / "code").mkdir(parents=True)  # code only: still the demo model
    assert default_model_dir()[0] == DEMO_MODEL_DIR
    (tmp_path / "model" / "m.params").write_bytes(b"")
    assert default_model_dir()[0] == str(tmp_path / "model")


def test_generate_command_without_model_dir(tmp_path, metrics):
    env = dict(os.environ, SAGEMAKER_BASE_DIR=str(tmp_path))
    prompt = list(metrics["samples"])[1]
    out = subprocess.run([sys.executable, "-m", "kogpt2_serving.cli", "generate", prompt,
                          "--parameters", '{"max_new_tokens": 40}'], env=env, stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, universal_newlines=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout == metrics["samples"][prompt] + "\n"
    assert "using the demo model shipped with kogpt2-serving" in out.stderr
    assert "loading model from {} ".format(DEMO_MODEL_DIR) in out.stderr and " done in " in out.stderr


def test_handler_serves_the_demo_model_when_the_model_dir_has_only_code(tmp_path, metrics):
    from kogpt2_serving import handler

    (tmp_path / "code").mkdir()
    model = handler.model_fn(str(tmp_path))
    assert model.loaded.files.directory == DEMO_MODEL_DIR
    prompt = list(metrics["samples"])[0]
    payload = handler.input_fn('{"inputs": "%s", "parameters": {"max_new_tokens": 40}}' % prompt, "application/json")
    body, content_type = handler.output_fn(handler.predict_fn(payload, model), "application/json")
    assert json.loads(body) == [{"generated_text": metrics["samples"][prompt]}]


@pytest.mark.serves
def test_make_serve_starts_with_no_arguments_and_answers_korean(tmp_path, demo):
    """The README's main job: `make serve` with no model directory serves the demo model."""
    from kogpt2_serving.generation.generator import Generator
    from server_utils import ServeProcess, free_port

    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    port = free_port()
    command = ["make", "-s", "-C", repo, "serve", "PORT={}".format(port),
               "ARGS=--log-file {}".format(tmp_path / "mms.log")]
    prompt = "대한민국의 주권은"
    with ServeProcess(None, port=port, command=command, env={"SAGEMAKER_BASE_DIR": str(tmp_path)}) as server:
        status, answer = server.post_json(prompt)  # what the walkthrough's SDK client sends
        log = server.log_text(cli_only=True)
    (expected,), = Generator(demo).generate([prompt], parse_parameters({}))
    assert status == 200
    assert answer[:2] == [prompt + expected.text, expected.generated_tokens]
    assert "using the demo model shipped with kogpt2-serving" in log
    assert "try it: curl -s http://127.0.0.1:{}/invocations".format(port) in log
