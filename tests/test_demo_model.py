"""The demo model shipped in the package: loads through the normal path, generates the same text
every time, beats the unigram baseline by the margin its model card promises, and is what the
CLI uses when no model directory is given."""
import glob
import io
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from kogpt2_serving.model_dir import DEMO_MODEL_DIR, default_model_dir, find_model_files
from kogpt2_serving.params import parse_parameters


@pytest.fixture(scope="module")
def metrics():
    with io.open(os.path.join(DEMO_MODEL_DIR, "metrics.json"), encoding="utf-8") as f:
        return json.load(f)


@pytest.fixture(scope="module")
def demo():
    from kogpt2_serving.loader import load_model

    return load_model(DEMO_MODEL_DIR, device="cpu")


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
    from kogpt2_serving.generation import Generator

    params = parse_parameters({"max_new_tokens": 40})
    prompts = list(metrics["samples"])
    first = Generator(demo).generate(prompts, params)
    again = Generator(demo).generate(prompts, params)
    assert first == again
    assert {p: p + seqs[0].text for p, seqs in zip(prompts, first)} == metrics["samples"]


def test_heldout_perplexity_beats_unigram_by_the_promised_margin(demo, metrics):
    from kogpt2_serving.perplexity import model_nll, unigram_nll

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
    from kogpt2_serving.generation import Generator
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
