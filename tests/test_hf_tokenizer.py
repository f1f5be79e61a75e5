"""tokenizer.json tokenizers (KoGPT2 v2): roles from the files, transformers-identical encode and
decode, and streaming Korean through IncrementalDecoder without a broken character."""
import json
import os
import random

import pytest

from kogpt2_serving.errors import ModelLoadError
from kogpt2_serving.text.hf_tokenizer import HFTokenizer
from kogpt2_serving.testing import train_hf_tokenizer
from kogpt2_serving.text.tokenizer import REPLACEMENT, IncrementalDecoder

transformers = pytest.importorskip("transformers")

# Korean outside the training corpus too (rare syllables, emoji): byte-level splits them into bytes.
TEXTS = ["아기 공룡 둘리는 희동이와 함께 놀았다.", "똠방각하 뷁! 쀍쀍 😀 2019년", "  여러 칸   띄어쓰기  "]
ROLES = dict(bos_token="</s>", eos_token="</s>", unk_token="<unk>", pad_token="<pad>", mask_token="<mask>")


def save(directory, kind="metaspace", roles=ROLES, config=None, special_tokens_map=None):
    """tokenizer.json (+ tokenizer_config.json via transformers when roles) + optional JSON files."""
    tok = train_hf_tokenizer(kind)
    roles = dict(roles or {})
    if kind == "bytelevel":
        roles.pop("unk_token", None)
    if roles:
        transformers.PreTrainedTokenizerFast(tokenizer_object=tok, **roles).save_pretrained(directory)
    else:
        tok.save(os.path.join(directory, "tokenizer.json"))
    paths = {}
    for name, content in (("config.json", config), ("special_tokens_map.json", special_tokens_map)):
        if content is not None:
            paths[name] = os.path.join(directory, name)
            with open(paths[name], "w") as f:
                json.dump(content, f)
    tokenizer_config = os.path.join(directory, "tokenizer_config.json")
    return HFTokenizer(os.path.join(directory, "tokenizer.json"), config=paths.get("config.json"),
                       tokenizer_config=tokenizer_config if os.path.exists(tokenizer_config) else None,
                       special_tokens_map=paths.get("special_tokens_map.json"))


@pytest.fixture(scope="module", params=["metaspace", "bytelevel"])
def pair(request, tmp_path_factory):
    """(ours, transformers' tokenizer) over the same files."""
    d = str(tmp_path_factory.mktemp(request.param))
    ours = save(d, request.param)
    return ours, transformers.AutoTokenizer.from_pretrained(d)


def test_roles_match_transformers(pair):
    ours, ref = pair
    assert (ours.bos_id, ours.eos_id, ours.pad_id, ours.mask_id) == (
        ref.bos_token_id, ref.eos_token_id, ref.pad_token_id, ref.mask_token_id)
    assert ours.unk_id == ref.unk_token_id  # None for byte-level BPE
    assert ours.id_to_piece(ours.eos_id) == "</s>"
    assert ours.vocab_size == len(ref)


@pytest.mark.parametrize("text", TEXTS)
def test_prompt_ids_are_the_tokenizers_own(pair, text):
    ours, ref = pair
    assert ours.encode_prompt(text) == ref(text)["input_ids"]  # no </s> prepended (v2's usage)
    assert ours.encode(text) == ref.encode(text, add_special_tokens=False)


def test_empty_prompt_starts_from_bos(pair):
    ours, _ = pair
    assert ours.encode_prompt("") == [ours.bos_id]


def test_decode_matches_transformers_on_random_ids(pair):
    """Random ids, specials and ids past the tokenizer (HF vocab padding) included."""
    ours, ref = pair
    rng = random.Random(0)
    for _ in range(200):
        ids = [rng.randrange(ours.vocab_size + 16) for _ in range(rng.randrange(1, 12))]
        assert ours.decode(ids) == ref.decode(ids, skip_special_tokens=True), ids


@pytest.mark.parametrize("text", TEXTS)
def test_decode_drops_special_tokens(pair, text):
    ours, _ = pair
    ids = ours.encode(text)
    specials = [ours.bos_id, ours.eos_id, ours.pad_id, ours.mask_id]
    assert ours.decode(specials + ids[:2] + specials + ids[2:] + specials) == ours.decode(ids)
    assert "</s>" not in ours.decode([ours.eos_id] + ids) and "<pad>" not in ours.decode([ours.pad_id] + ids)


def test_id_past_the_tokenizer_has_no_piece(pair):
    ours, _ = pair
    assert ours.id_to_piece(ours.vocab_size + 3) == ""


@pytest.mark.parametrize("text", TEXTS)
def test_streaming_never_emits_a_broken_character(pair, text):
    ours, ref = pair
    prompt = ours.encode_prompt("오늘은")
    ids = ours.encode(text) + [ours.eos_id]
    decoder = IncrementalDecoder(ours, prompt)
    deltas = [decoder.push(i) for i in ids] + [decoder.flush()]
    assert all(REPLACEMENT not in d for d in deltas), deltas
    full = ref.decode(prompt + ids, skip_special_tokens=True)
    assert "".join(deltas) == full[len(ref.decode(prompt, skip_special_tokens=True)):]


def test_byte_level_streaming_holds_back_partial_syllables(tmp_path):
    """The previous test can fail: a rare syllable spans several byte-level ids, and decoding
    a prefix of them gives U+FFFD, which the decoder must hold back."""
    ours = save(str(tmp_path), "bytelevel")
    ids = ours.encode("쀍")
    assert len(ids) > 1 and ours.decode(ids[:1]).endswith(REPLACEMENT)
    decoder = IncrementalDecoder(ours)
    assert [decoder.push(i) for i in ids] == [""] * (len(ids) - 1) + ["쀍"]


# ---- where the roles come from ----

def test_roles_from_config_ids_when_only_tokenizer_json(tmp_path):
    """The published v2 ships tokenizer.json and config.json only."""
    probe = train_hf_tokenizer("metaspace")
    ids = {name: probe.token_to_id(name) for name in ("<s>", "</s>", "<pad>", "<unk>")}
    ours = save(str(tmp_path), roles=None,
                config={"bos_token_id": ids["<s>"], "eos_token_id": ids["</s>"], "pad_token_id": ids["<pad>"]})
    assert (ours.bos_id, ours.eos_id, ours.pad_id) == (ids["<s>"], ids["</s>"], ids["<pad>"])
    assert ours.unk_id == ids["<unk>"]  # from tokenizer.json's BPE model
    assert ours.mask_id is None
    assert ours.encode_prompt("아기") == ours.encode("아기")


def test_bos_and_pad_fall_back_to_eos(tmp_path):
    probe = train_hf_tokenizer("metaspace")
    ours = save(str(tmp_path), roles=None, config={"eos_token_id": probe.token_to_id("</s>")})
    assert ours.bos_id == ours.pad_id == ours.eos_id == probe.token_to_id("</s>")


def test_special_tokens_map_wins_and_accepts_added_token_dicts(tmp_path):
    ours = save(str(tmp_path), config={"eos_token_id": 0},
                special_tokens_map={"eos_token": {"content": "<sys>", "special": True}, "pad_token": "<usr>"})
    assert ours.id_to_piece(ours.eos_id) == "<sys>"
    assert ours.id_to_piece(ours.pad_id) == "<usr>"
    assert ours.id_to_piece(ours.bos_id) == "</s>"  # from tokenizer_config.json


def test_no_eos_anywhere(tmp_path):
    d = str(tmp_path)
    with pytest.raises(ModelLoadError) as e:
        save(d, roles=None, config={"bos_token_id": 0})
    assert str(e.value) == ("no eos token found for {}: none of {} names one (generation needs it to stop)"
                            .format(os.path.join(d, "tokenizer.json"), os.path.join(d, "config.json")))


def test_role_token_missing_from_vocab(tmp_path):
    d = str(tmp_path)
    with pytest.raises(ModelLoadError) as e:
        save(d, special_tokens_map={"eos_token": "<|endoftext|>"})
    assert str(e.value) == "{}: eos_token '<|endoftext|>' is not in {}".format(
        os.path.join(d, "special_tokens_map.json"), os.path.join(d, "tokenizer.json"))


@pytest.mark.parametrize("config,message", [
    ({"eos_token_id": 100000}, "eos_token_id 100000 is not in"),
    ({"eos_token_id": "</s>"}, "eos_token_id must be a non-negative integer, got '</s>'"),
    ({"eos_token_id": True}, "eos_token_id must be a non-negative integer, got True"),
])
def test_bad_config_ids(tmp_path, config, message):
    with pytest.raises(ModelLoadError, match=message):
        save(str(tmp_path), roles=None, config=config)


def test_corrupt_tokenizer_json(tmp_path):
    path = str(tmp_path / "tokenizer.json")
    with open(path, "w") as f:
        f.write("{\"model\": 3}")
    with pytest.raises(ModelLoadError, match="cannot read tokenizer {}: ".format(path)):
        HFTokenizer(path)
