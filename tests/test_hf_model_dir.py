"""Format detection from the files present: v1, HF GPT-2, converted v2; mixed or unrecognised
directories are errors that list what was found. Directories hold real (empty or copied) files:
detection looks at names only, loading is tested elsewhere."""
import os

import pytest

from kogpt2_serving.errors import ModelLoadError
from kogpt2_serving.files.model_dir import HF_GPT2, KOGPT2_V1, find_model_files

V1 = ["mxnet_kogpt2_9250bedc00.params", "kogpt2_news_wiki_ko_cased_818bfa919d.spiece"]
HF = ["config.json", "model.safetensors", "tokenizer.json"]
HF_LAYOUT = "model.safetensors or pytorch_model.bin, with tokenizer.json and config.json"


def make_dir(tmp_path, names):
    d = str(tmp_path / "model")
    os.makedirs(d)
    for name in names:
        open(os.path.join(d, name), "w").close()
    return d


def listing(names):
    return ", ".join(sorted(names))


def test_v1_directory(tmp_path):
    d = make_dir(tmp_path, V1 + ["config.json", "README.md"])
    files = find_model_files(d)
    assert files.format == KOGPT2_V1
    assert (files.params, files.spiece, files.config) == (os.path.join(d, V1[0]), os.path.join(d, V1[1]),
                                                          os.path.join(d, "config.json"))
    assert files.tokenizer == files.spiece and files.tokenizer_json is None
    assert files.paths() == [files.params, files.spiece, files.config]


def test_hf_directory(tmp_path):
    d = make_dir(tmp_path, HF + ["tokenizer_config.json", "generation_config.json", "README.md"])
    files = find_model_files(d)
    assert files.format == HF_GPT2
    assert files.params == os.path.join(d, "model.safetensors")
    assert files.spiece is None and files.tokenizer == os.path.join(d, "tokenizer.json")
    assert files.tokenizer_extras == (os.path.join(d, "tokenizer_config.json"),)
    assert files.paths() == [os.path.join(d, n) for n in
                             ("model.safetensors", "tokenizer.json", "config.json", "tokenizer_config.json")]


def test_hf_bin_only_and_both(tmp_path):
    d = make_dir(tmp_path, ["config.json", "pytorch_model.bin", "tokenizer.json"])
    assert find_model_files(d).params == os.path.join(d, "pytorch_model.bin")
    open(os.path.join(d, "model.safetensors"), "w").close()
    assert find_model_files(d).params == os.path.join(d, "model.safetensors")


def test_converted_v2_directory(tmp_path):
    d = make_dir(tmp_path, [V1[0], "tokenizer.json", "config.json", "special_tokens_map.json"])
    files = find_model_files(d)
    assert files.format == KOGPT2_V1
    assert files.params == os.path.join(d, V1[0]) and files.spiece is None
    assert files.tokenizer_json == os.path.join(d, "tokenizer.json")
    assert files.tokenizer_extras == (os.path.join(d, "special_tokens_map.json"),)


def test_converted_v2_without_config(tmp_path):
    names = [V1[0], "tokenizer.json"]
    d = make_dir(tmp_path, names)
    with pytest.raises(ModelLoadError) as e:
        find_model_files(d)
    assert str(e.value) == ("model directory {} holds {} with tokenizer.json (a converted KoGPT2 v2 model) but no "
                            "config.json, which such a model needs (activation, special token ids); found: {}"
                            .format(d, V1[0], listing(names)))


def test_mixed_weights(tmp_path):
    names = V1 + HF
    d = make_dir(tmp_path, names)
    with pytest.raises(ModelLoadError) as e:
        find_model_files(d)
    assert str(e.value) == ("model directory {} mixes KoGPT2 v1 files ({}) with HuggingFace weights "
                            "(model.safetensors); keep one format per directory. Found: {}".format(
                                d, ", ".join(sorted(V1)), listing(names)))


def test_two_tokenizers(tmp_path):
    names = V1 + ["tokenizer.json", "config.json"]
    d = make_dir(tmp_path, names)
    with pytest.raises(ModelLoadError) as e:
        find_model_files(d)
    assert str(e.value) == "model directory {} has two tokenizers, {} and tokenizer.json; keep one. Found: {}".format(
        d, V1[1], listing(names))


@pytest.mark.parametrize("missing", ["tokenizer.json", "config.json"])
def test_hf_directory_missing_a_file(tmp_path, missing):
    names = [n for n in HF if n != missing]
    d = make_dir(tmp_path, names)
    with pytest.raises(ModelLoadError) as e:
        find_model_files(d)
    assert str(e.value) == ("model directory {} has model.safetensors but no {}: a HuggingFace GPT-2 model needs {}; "
                            "found: {}".format(d, missing, HF_LAYOUT, listing(names)))


def test_sharded_checkpoint(tmp_path):
    names = ["config.json", "tokenizer.json", "model.safetensors.index.json", "model-00001-of-00002.safetensors"]
    d = make_dir(tmp_path, names)
    with pytest.raises(ModelLoadError, match="holds a sharded checkpoint \\(model.safetensors.index.json\\)"):
        find_model_files(d)


def test_unrecognised_directory_lists_files_and_both_layouts(tmp_path):
    names = ["config.json", "tokenizer.json", "weights.h5"]
    d = make_dir(tmp_path, names)
    with pytest.raises(ModelLoadError) as e:
        find_model_files(d)
    assert str(e.value) == ("model directory {} must hold exactly one *.params file, found none: {} (nor is it a "
                            "HuggingFace GPT-2 model: {})".format(d, listing(names), HF_LAYOUT))


def test_v1_messages_unchanged(tmp_path):
    d = make_dir(tmp_path, [V1[1]])
    with pytest.raises(ModelLoadError) as e:
        find_model_files(d)
    assert str(e.value) == "model directory {} must hold exactly one *.params file, found none: {}".format(d, V1[1])
