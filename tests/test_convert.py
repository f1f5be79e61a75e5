"""`convert` writes a v1-layout directory that serves exactly like its source."""
import glob
import hashlib
import json
import os
import shutil

import numpy as np
import pytest

from kogpt2_serving.files import checkpoint
from kogpt2_serving.cli import main
from kogpt2_serving.files.convert import convert
from kogpt2_serving.errors import ModelLoadError
from kogpt2_serving.files.loader import load_model
from kogpt2_serving.testing import make_hf_test_model, make_test_model

pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

PROMPTS = ["아기 공룡 둘리는 희동이와", "2019년 한해를 보내며,", "서울에서 부산까지 기차로"]


def greedy(loaded, prompt, max_new_tokens=32):
    ids = loaded.tokenizer.encode_prompt(prompt)
    state, logits = loaded.engine.start([ids], max_new_tokens)
    out = []
    for _ in range(max_new_tokens):
        out.append(int(np.argmax(logits[0])))
        if out[-1] == loaded.tokenizer.eos_id:
            break
        logits = loaded.engine.step(state, [out[-1]])
    return out, loaded.tokenizer.decode(ids + out)


def assert_same_outputs(a, b):
    for prompt in PROMPTS:
        ids = a.tokenizer.encode_prompt(prompt)
        assert b.tokenizer.encode_prompt(prompt) == ids
        np.testing.assert_array_equal(a.engine.full_logits([ids]), b.engine.full_logits([ids]))
        assert greedy(a, prompt) == greedy(b, prompt)


@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory):
    d = make_hf_test_model(str(tmp_path_factory.mktemp("hf")), init_range=0.2)
    with open(os.path.join(d, "LICENSE"), "w") as f:
        f.write("CC-BY-NC-SA 4.0 (test notice)\n")
    return d


@pytest.fixture(scope="module")
def converted(hf_dir, tmp_path_factory):
    dest = str(tmp_path_factory.mktemp("out") / "v1")
    convert(hf_dir, dest)
    return dest


def test_converted_v2_layout(converted):
    names = sorted(os.listdir(converted))
    params = [n for n in names if n.endswith(".params")]
    assert names == sorted(params + ["LICENSE", "config.json", "tokenizer.json", "tokenizer_config.json"])
    with open(os.path.join(converted, params[0]), "rb") as f:
        assert params[0] == "mxnet_kogpt2_{}.params".format(hashlib.md5(f.read()).hexdigest()[:10])
    raw = checkpoint.read_params(os.path.join(converted, params[0]))
    assert "_embed.weight" in raw and "_logits_proj.weight" in raw  # structural layout, tied head stored twice


def test_converted_config_keeps_token_ids_and_activation(hf_dir, converted):
    with open(os.path.join(hf_dir, "config.json")) as f:
        source = json.load(f)
    with open(os.path.join(converted, "config.json")) as f:
        written = json.load(f)
    for key in ("bos_token_id", "eos_token_id", "pad_token_id", "vocab_size", "n_embd", "n_layer", "n_head"):
        assert written[key] == source[key]
    assert written["activation_function"] == "gelu_new"


def test_round_trip_gives_identical_outputs(hf_dir, converted):
    a, b = load_model(hf_dir, device="cpu"), load_model(converted, device="cpu")
    assert (a.files.format, b.files.format) == ("hf-gpt2", "kogpt2-v1")
    assert b.config == a.config
    assert (b.tokenizer.bos_id, b.tokenizer.eos_id, b.tokenizer.pad_id, b.tokenizer.unk_id) == (
        a.tokenizer.bos_id, a.tokenizer.eos_id, a.tokenizer.pad_id, a.tokenizer.unk_id)
    assert_same_outputs(a, b)


def test_converted_directory_matches_transformers(hf_dir, converted):
    import torch

    ref = transformers.GPT2LMHeadModel.from_pretrained(hf_dir).eval()
    ours = load_model(converted, device="cpu")
    ids = ours.tokenizer.encode_prompt(PROMPTS[0])
    with torch.no_grad():
        expected = ref(torch.tensor([ids])).logits[0].numpy()
    np.testing.assert_allclose(ours.engine.full_logits([ids])[0], expected, rtol=0, atol=1e-4)


@pytest.mark.parametrize("weights,role_files", [(("bin",), True), (("safetensors",), False)])
def test_bin_source_and_config_only_roles_convert(tmp_path, weights, role_files):
    src = make_hf_test_model(str(tmp_path / "src"), weights=weights, role_files=role_files, init_range=0.2)
    dest = str(tmp_path / "dest")
    convert(src, dest)
    assert_same_outputs(load_model(src, device="cpu"), load_model(dest, device="cpu"))


def test_v1_legacy_source_becomes_structural(tmp_path):
    src = make_test_model(str(tmp_path / "src"), layout="legacy", n_embd=64, n_head=4)
    dest = str(tmp_path / "dest")
    files = convert(src, dest)
    assert files.format == "kogpt2-v1" and files.spiece.endswith(".spiece")
    a, b = load_model(src, device="cpu"), load_model(dest, device="cpu")
    assert b.tokenizer.encode_prompt("아기")[0] == b.tokenizer.bos_id  # v1 keeps its <s> prefix
    assert_same_outputs(a, b)


def test_cli_convert(hf_dir, tmp_path, capsys):
    dest = str(tmp_path / "cli")
    assert main(["convert", "--from", hf_dir, "--to", dest]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0] == "wrote {} (kogpt2-v1):".format(dest)
    params = glob.glob(os.path.join(dest, "*.params"))[0]
    assert out[1:] == ["  " + p for p in (params, os.path.join(dest, "tokenizer.json"),
                                          os.path.join(dest, "config.json"),
                                          os.path.join(dest, "tokenizer_config.json"))]


def test_cli_refuses_non_empty_output(hf_dir, converted, capsys):
    assert main(["convert", "--from", hf_dir, "--to", converted]) == 1
    err = capsys.readouterr().err
    assert "error: output directory {} is not empty (".format(converted) in err


def test_output_is_the_source(hf_dir):
    with pytest.raises(ModelLoadError, match="is not empty"):
        convert(hf_dir, hf_dir)


def test_invalid_source_writes_nothing(hf_dir, tmp_path):
    src = str(tmp_path / "src")
    shutil.copytree(hf_dir, src)
    os.remove(os.path.join(src, "config.json"))
    dest = str(tmp_path / "dest")
    with pytest.raises(ModelLoadError, match="but no config.json"):
        convert(src, dest)
    assert not os.path.exists(dest)
