"""Tiny KoGPT2-format model directories, built in seconds, for tests and benchmarks.

The files are real: a SentencePiece BPE model with KoGPT2's special pieces, an MXNet `.params`
file in any of the three key layouts, and optionally a `config.json`. File names carry the
first 10 hex digits of their MD5, as the original release did.
"""
import os
import shutil
import tempfile

import numpy as np

from ..files import checkpoint
from ..files.config import GPT2Config, write_config_file

# A few sentences of plain Korean (written for this project) to train a tiny vocabulary on.
CORPUS = """대한민국은 민주공화국이다.
대한민국의 주권은 국민에게 있고, 모든 권력은 국민으로부터 나온다.
오늘은 날씨가 맑고 바람이 시원하다. 우리는 공원에 가서 산책을 했다.
아기 공룡 둘리는 희동이와 함께 놀았다.
2019년 한해를 보내며, 새해에는 더 많은 사람들이 행복하기를 바란다.
서울에서 부산까지 기차로 3시간 20분이 걸린다!
학생들은 도서관에서 책을 읽고, 선생님은 수업을 준비한다.
"정말요?" 그가 물었다. 그래요, 정말입니다.
컴퓨터와 인터넷은 우리의 삶을 크게 바꾸었다.
가나다라마바사 아자차카타파하 1234567890 ... ? ! , .
"""
UNUSED = ["<unused{}>".format(i) for i in range(10)]


def train_tokenizer(path_prefix, vocab_size=400, byte_fallback=False, special_ids=(0, 1, 2, 3), corpus=CORPUS):
    """Train a BPE SentencePiece model; special_ids = (unk, bos, eos, pad). Returns the .model path."""
    import sentencepiece as spm

    unk, bos, eos, pad = special_ids
    spm.SentencePieceTrainer.Train(
        sentence_iterator=iter(corpus.splitlines()), model_prefix=path_prefix, model_type="bpe",
        vocab_size=vocab_size, hard_vocab_limit=False, character_coverage=1.0, byte_fallback=byte_fallback,
        unk_id=unk, bos_id=bos, eos_id=eos, pad_id=pad, user_defined_symbols=UNUSED,
        minloglevel=2, num_threads=1)
    return path_prefix + ".model"


def grow_vocabulary(model_path, size):
    """Append synthetic pieces (Hangul syllables, then syllable pairs, all word-initial or not)
    to a SentencePiece model until it has `size` pieces: a real-format tokenizer at KoGPT2's
    vocabulary size (50,000) without a corpus that could train one. Needs `protobuf`."""
    from sentencepiece import sentencepiece_model_pb2

    proto = sentencepiece_model_pb2.ModelProto()
    with open(model_path, "rb") as f:
        proto.ParseFromString(f.read())
    existing = {p.piece for p in proto.pieces}
    low = min(p.score for p in proto.pieces)
    candidates = _synthetic_pieces()
    while len(proto.pieces) < size:
        piece = next(candidates)
        if piece not in existing:
            added = proto.pieces.add()
            added.piece, added.score = piece, low - len(proto.pieces)  # rarer than every trained piece
            existing.add(piece)
    with open(model_path, "wb") as f:
        f.write(proto.SerializeToString())


def _synthetic_pieces():
    syllables = [chr(c) for c in range(0xAC00, 0xD7A4)]
    for s in syllables:
        yield "\u2581" + s
        yield s
    for a in syllables:
        for b in syllables:
            yield "\u2581" + a + b


def random_params(config, seed=0):
    """Canonical name -> NDArray with GPT-2-like scales; LayerNorm gammas/betas not 1/0 so that
    swapping them would show."""
    import mxnet as mx

    rng = np.random.RandomState(seed)
    params = {}
    for name, shape in sorted(checkpoint.expected_shapes(config).items()):
        if name.endswith(".gamma"):
            value = 1.0 + 0.1 * rng.standard_normal(shape)
        elif name.endswith((".beta", ".bias")):
            value = 0.02 * rng.standard_normal(shape)
        else:
            value = 0.02 * rng.standard_normal(shape) * (10 if "_embed" in name else 1)
        params[name] = mx.nd.array(value.astype("float32"))
    return params


def make_test_model(directory=None, layout="structural", n_layer=2, n_embd=64, n_head=None, n_positions=128,
                    activation="gelu", write_config=True, seed=0, byte_fallback=False, special_ids=(0, 1, 2, 3),
                    float16=False, prefix="gpt2model0_", vocab_size=400):
    """Write a tiny model directory; returns its path. Without a config file the heads are
    inferred from the width (head size 64), so n_embd must then be a multiple of 64.
    vocab_size above 400 grows the trained tokenizer with synthetic pieces."""
    directory = directory or tempfile.mkdtemp(prefix="kogpt2-test-")
    os.makedirs(directory, exist_ok=True)
    work = tempfile.mkdtemp(dir=directory, prefix=".sp-")
    model_path = train_tokenizer(os.path.join(work, "sp"), min(vocab_size, 400), byte_fallback, special_ids)
    if vocab_size > 400:
        grow_vocabulary(model_path, vocab_size)
    spiece = store_with_md5(model_path, directory, "kogpt2_news_wiki_ko_cased_{}.spiece")
    shutil.rmtree(work)

    import sentencepiece as spm

    pieces = spm.SentencePieceProcessor(model_file=spiece).GetPieceSize()
    config = GPT2Config(vocab_size=pieces, n_positions=n_positions, n_embd=n_embd, n_layer=n_layer,
                        n_head=n_head or max(1, n_embd // 64), activation_function=activation)
    params_tmp = os.path.join(directory, ".params.tmp")
    checkpoint.save_params(random_params(config, seed), params_tmp, layout=layout, prefix=prefix, float16=float16)
    store_with_md5(params_tmp, directory, "mxnet_kogpt2_{}.params")
    os.remove(params_tmp)
    if write_config:
        write_config_file(config, os.path.join(directory, "config.json"))
    return directory


def make_kogpt2_size_model(directory=None, seed=0):
    """Random weights at KoGPT2 v1's size (124M parameters, vocab 50,000, no config.json, as
    the original release): for benchmarks. About 500 MB on disk."""
    return make_test_model(directory, layout="structural", n_layer=12, n_embd=768, n_positions=1024,
                           write_config=False, seed=seed, vocab_size=50000)


def store_with_md5(src, directory, template):
    """Copy `src` into `directory` as template.format(first 10 hex digits of its MD5), the way
    the original release named its files; returns the new path."""
    dest = os.path.join(directory, checkpoint.md5_name(src, template))
    shutil.copyfile(src, dest)
    return dest




# ---- HuggingFace GPT-2 (KoGPT2 v2 layout) ----

V2_SPECIALS = ["<s>", "</s>", "<usr>", "<pad>", "<sys>", "<unk>", "<mask>"]  # KoGPT2 v2's first ids


def train_hf_tokenizer(kind="metaspace", vocab_size=400, corpus=CORPUS):
    """A `tokenizers` BPE tokenizer trained on `corpus`, with v2's special tokens first.

    "metaspace": `▁` word marks and `<unk>` for unseen characters, like v2's character BPE;
    "bytelevel": GPT-2's byte-level BPE, never unknown, a Korean syllable may span several ids."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    if kind == "metaspace":
        tok = Tokenizer(models.BPE(unk_token="<unk>"))
        tok.pre_tokenizer, tok.decoder = pre_tokenizers.Metaspace(), decoders.Metaspace()
        alphabet = []
    elif kind == "bytelevel":
        tok = Tokenizer(models.BPE())
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tok.decoder = decoders.ByteLevel()
        alphabet = pre_tokenizers.ByteLevel.alphabet()
    else:
        raise ValueError("kind must be metaspace or bytelevel, got {!r}".format(kind))
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=V2_SPECIALS, initial_alphabet=alphabet,
                                  show_progress=False)
    tok.train_from_iterator(corpus.splitlines(), trainer)
    return tok


def make_hf_test_model(directory=None, weights=("safetensors",), activation="gelu_new", tokenizer="metaspace",
                       role_files=True, n_layer=2, n_embd=64, n_head=4, n_positions=128, vocab_padding=16, seed=0,
                       init_range=0.02):
    """Write a tiny HuggingFace GPT-2 directory as transformers itself saves it; returns its path.

    Needs torch and transformers (test dependencies). `weights`: "safetensors" (save_pretrained)
    and/or "bin" (a pickled state dict as older transformers wrote it: with the tied
    lm_head.weight and the causal-mask buffers). role_files=False writes only tokenizer.json, so
    special-token roles come from config.json's ids, as for the published v2. The embedding has
    `vocab_padding` rows more than the tokenizer, as HF models pad. Every parameter, biases and
    LayerNorms included, is random so that a mapping mistake shows.
    `GPT2LMHeadModel.from_pretrained(path)` reads the result back as the reference."""
    import torch
    from transformers import GPT2Config as HFConfig
    from transformers import GPT2LMHeadModel, PreTrainedTokenizerFast

    directory = directory or tempfile.mkdtemp(prefix="kogpt2-hf-test-")
    os.makedirs(directory, exist_ok=True)
    tok = train_hf_tokenizer(tokenizer)
    roles = dict(bos_token="</s>", eos_token="</s>", pad_token="<pad>", mask_token="<mask>",
                 unk_token="<unk>" if tokenizer == "metaspace" else None)
    if role_files:
        PreTrainedTokenizerFast(tokenizer_object=tok, **roles).save_pretrained(directory)
    else:
        tok.save(os.path.join(directory, "tokenizer.json"))
    config = HFConfig(vocab_size=tok.get_vocab_size() + vocab_padding, n_positions=n_positions, n_embd=n_embd,
                      n_layer=n_layer, n_head=n_head, activation_function=activation, initializer_range=init_range,
                      bos_token_id=tok.token_to_id("</s>"), eos_token_id=tok.token_to_id("</s>"),
                      pad_token_id=tok.token_to_id("<pad>"))
    torch.manual_seed(seed)
    model = GPT2LMHeadModel(config).eval()
    _randomize_vectors(model, torch)
    model.save_pretrained(directory)
    if "bin" in weights:
        torch.save(_legacy_state_dict(model, n_positions, torch), os.path.join(directory, "pytorch_model.bin"))
    if "safetensors" not in weights:
        os.remove(os.path.join(directory, "model.safetensors"))
    return directory


def _randomize_vectors(model, torch):
    """GPT-2 initializes biases to 0 and LayerNorms to 1/0; make them random too."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("ln_1.weight") or name.endswith("ln_2.weight") or name.endswith("ln_f.weight"):
                p.copy_(1.0 + 0.1 * torch.randn_like(p))
            elif p.dim() == 1:
                p.copy_(0.02 * torch.randn_like(p))


def _legacy_state_dict(model, n_positions, torch):
    state = dict(model.state_dict())
    state.setdefault("lm_head.weight", state["transformer.wte.weight"])
    causal = torch.tril(torch.ones((n_positions, n_positions), dtype=torch.uint8)).view(1, 1, n_positions, n_positions)
    for i in range(model.config.n_layer):
        state.setdefault("transformer.h.{}.attn.bias".format(i), causal)
        state.setdefault("transformer.h.{}.attn.masked_bias".format(i), torch.tensor(-1e4))
    return state
