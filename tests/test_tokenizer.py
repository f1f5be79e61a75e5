"""SentencePiece used directly: round trips, special ids from the model, incremental decoding."""
import glob
import os

import pytest

from kogpt2_serving.testing import make_test_model
from kogpt2_serving.text.tokenizer import REPLACEMENT, IncrementalDecoder, SentencePieceTokenizer

TEXTS = [
    "대한민국은 민주공화국이다.",
    "오늘은 날씨가 맑고, 바람이 시원하다!",
    "서울에서 부산까지 기차로 3시간 20분이 걸린다!",
    "\"정말요?\" 그가 물었다.",
]


def tokenizer(directory):
    return SentencePieceTokenizer(glob.glob(os.path.join(directory, "*.spiece"))[0])


@pytest.fixture(scope="module")
def tok(tmp_path_factory):
    return tokenizer(make_test_model(str(tmp_path_factory.mktemp("tok"))))


@pytest.fixture(scope="module")
def byte_tok(tmp_path_factory):
    return tokenizer(make_test_model(str(tmp_path_factory.mktemp("bytetok")), byte_fallback=True))


@pytest.mark.parametrize("text", TEXTS)
def test_round_trip(tok, text):
    assert tok.decode(tok.encode(text)) == text
    assert tok.decode(tok.encode_prompt(text)) == text  # <s> is not shown


def test_prompt_starts_with_bos_and_spaces_become_word_boundaries(tok):
    ids = tok.encode_prompt("대한민국은 민주공화국이다.")
    assert ids[0] == tok.bos_id
    pieces = [tok.id_to_piece(i) for i in ids[1:]]
    assert pieces[0].startswith("\u2581") and any(p.startswith("\u2581") for p in pieces[1:])


def test_emoji_round_trip_with_byte_fallback(byte_tok):
    text = "오늘도 화이팅 😀👍 좋아요"
    ids = byte_tok.encode(text)
    assert any(byte_tok.id_to_piece(i).startswith("<0x") for i in ids)
    assert byte_tok.decode(ids) == text


def test_unknown_characters_without_byte_fallback(tok):
    """Characters outside the vocabulary (KoGPT2 v1 has no byte fallback) become <unk>, shown
    as sentencepiece's unknown surface " \u2047 "; everything else survives."""
    ids = tok.encode("대한😀민국")
    assert ids.count(tok.unk_id) == 1
    assert tok.decode(ids) == "대한 \u2047 민국"
    assert tok.decode(tok.encode("대한 😀😀 민국")) == "대한  \u2047  민국"


def test_special_ids_come_from_the_model(tmp_path):
    shuffled = tokenizer(make_test_model(str(tmp_path), special_ids=(3, 2, 1, 0)))
    assert (shuffled.unk_id, shuffled.bos_id, shuffled.eos_id, shuffled.pad_id) == (3, 2, 1, 0)
    assert shuffled.encode_prompt("가")[0] == 2
    assert shuffled.decode([2, 0] + shuffled.encode("대한민국") + [1]) == "대한민국"


EMOJI_TEXT = "오늘도 화이팅 😀👍 좋아요 🇰🇷"


@pytest.mark.parametrize("text", TEXTS + [EMOJI_TEXT])
def test_incremental_decoding_never_emits_broken_characters(byte_tok, text):
    prompt = byte_tok.encode_prompt("시작")
    ids = byte_tok.encode(" " + text)
    decoder = IncrementalDecoder(byte_tok, prompt)
    deltas = [decoder.push(i) for i in ids]
    deltas.append(decoder.flush())
    assert all(REPLACEMENT not in d for d in deltas)
    assert "".join(deltas) == " " + text
    assert "".join(deltas) == byte_tok.decode(prompt + ids)[len(byte_tok.decode(prompt)):]
    held = sum(1 for d in deltas[:-1] if d == "")
    assert (held > 0) == (text == EMOJI_TEXT)  # multi-byte emoji really were held back


def test_incremental_decoding_from_bos_only(tok):
    decoder = IncrementalDecoder(tok, [tok.bos_id])
    text = "".join(decoder.push(i) for i in tok.encode("대한민국은 민주공화국이다."))
    assert text == "대한민국은 민주공화국이다."


def test_flush_shows_incomplete_character_as_replacement(byte_tok):
    ids = byte_tok.encode("😀")
    decoder = IncrementalDecoder(byte_tok, [byte_tok.bos_id])
    assert [decoder.push(i) for i in ids[:-1]] == [""] * (len(ids) - 1)
    assert decoder.flush() == REPLACEMENT * 3  # the emoji's first 3 of 4 bytes, one U+FFFD each
