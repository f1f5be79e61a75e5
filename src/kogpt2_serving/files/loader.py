"""Load a model directory into a ready-to-decode :class:`LoadedModel`.

Order of checks: files present -> tokenizer readable -> checkpoint readable and in a known
layout -> config (file or inferred) agrees with the checkpoint's shapes and the tokenizer's
vocabulary. Each failure is a ModelLoadError naming the file, the key and both shapes.
"""
import logging
import os
import time
from typing import NamedTuple

from ..errors import ModelLoadError
from ..model.device import choose_context, choose_dtype, compute_dtype, ensure_threads_configured
from ..text.tokenizer import SentencePieceTokenizer
from . import checkpoint, hf_checkpoint
from .config import read_config_file
from .model_dir import HF_GPT2, ModelFiles, find_model_files

log = logging.getLogger(__name__)


class LoadedModel(NamedTuple):
    files: ModelFiles
    config: object  # GPT2Config
    tokenizer: object  # SentencePieceTokenizer (v1) or HFTokenizer (tokenizer.json)
    engine: object  # Engine
    ctx: object  # mx.Context
    dtype: str


def load_model(model_dir, device="auto", dtype="float32"):
    ensure_threads_configured()
    import mxnet as mx  # noqa: F401  (fail here, not mid-load, when MXNet is missing)

    from ..model.engine import Engine
    from ..model.int8_weights import store_weights_in_int8
    from ..model.network import GPT2Model, store_weights_in_bfloat16, use_attention_kernel, use_f32_kernel_for_steps

    started = time.time()
    files = find_model_files(model_dir)
    tokenizer, params, config = read_checked(files)
    ctx = choose_context(device)
    dtype = choose_dtype(ctx, dtype)
    model = GPT2Model(config)
    # bfloat16 and int8 are storage formats for the weights; activations and the cache stay float32.
    checkpoint.load_into(model, params, ctx, compute_dtype(dtype))
    del params  # the checkpoint's arrays: int8 must not keep a float32 copy alive
    if dtype == "bfloat16":
        store_weights_in_bfloat16(model)
    elif dtype == "int8":
        store_weights_in_int8(model)
    elif f32_kernel_steps(ctx, dtype):
        use_f32_kernel_for_steps(model)
    if kernels_run(ctx):
        use_attention_kernel(model)
    engine = Engine(model, ctx, compute_dtype(dtype))
    log.info("loaded %s (%d layers, %d units, vocab %d) on %s as %s in %.1f s", files.params, config.n_layer,
             config.n_embd, config.vocab_size, ctx, dtype, time.time() - started)
    return LoadedModel(files, config, tokenizer, engine, ctx, dtype)


def f32_kernel_steps(ctx, dtype):
    """Whether float32 decode steps go through our kernel (kogpt2_linear_f32) rather than oneDNN's
    1x1 convolutions: wherever the kernels run. Measured: ~0.55x of oneDNN's step products on
    AVX2; on an AVX-512 Xeon whole steps 0.88x at 1 row and equal at 10-16 (oneDNN's are
    compute-bound there too); and no step copy of the weights (half the memory)."""
    return dtype == "float32" and kernels_run(ctx)


def kernels_run(ctx):
    """Whether our kernels serve this model's decode steps: on a CPU whose MXNet loads them
    (MXNet >= 1.7 and a C++ compiler for the first build). Otherwise oneDNN's convolution steps
    serve, with a warning when the build failed (MXNet 1.6 is expected and says nothing)."""
    if ctx.device_type != "cpu":
        return False
    from .. import kernels

    if kernels.problem():
        return False
    try:
        kernels.load()
        return True
    except ModelLoadError as e:  # no compiler, a failed build: the convolution steps still work
        log.warning("decode steps through oneDNN: %s", e)
        return False


def read_checked(files):
    """(tokenizer, canonical params, config) of a model directory, every file checked against
    the others: what serving and converting both start from."""
    tokenizer = load_tokenizer(files)
    params, config = read_weights(files)
    checkpoint.check_params(params, config, files.params)
    check_vocab(config, tokenizer, files)
    return tokenizer, params, config


def load_tokenizer(files):
    """The tokenizer class follows the tokenizer file, not the weights: a converted v2 model
    (*.params + tokenizer.json) keeps v2's prompts and special tokens."""
    if files.spiece:
        return SentencePieceTokenizer(files.spiece)
    from ..text.hf_tokenizer import HFTokenizer

    extras = {os.path.basename(p): p for p in files.tokenizer_extras}
    return HFTokenizer(files.tokenizer_json, config=files.config,
                       tokenizer_config=extras.get("tokenizer_config.json"),
                       special_tokens_map=extras.get("special_tokens_map.json"))


def read_weights(files):
    """(canonical params, config) from the directory's weights file, in either format."""
    if files.format == HF_GPT2:
        config = hf_checkpoint.read_hf_config(files.config)
        return hf_checkpoint.read_hf_params(files.params, config), config
    params = checkpoint.canonicalize(checkpoint.read_params(files.params), files.params)
    config = read_config_file(files.config) if files.config else checkpoint.infer_config(params, files.params)
    return params, config


def check_vocab(config, tokenizer, files):
    """v1: the embedding has exactly one row per SentencePiece piece. tokenizer.json models
    (v2 and HF GPT-2) may pad the embedding past the tokenizer (HF pads vocabularies to a
    round size, e.g. v2's 51,200), so there only a smaller embedding is an error."""
    source = files.config or files.params
    if files.spiece:
        if config.vocab_size != tokenizer.vocab_size:
            raise ModelLoadError("vocabulary mismatch: {} has vocab_size {} but {} has {} pieces".format(
                source, config.vocab_size, files.spiece, tokenizer.vocab_size))
    elif config.vocab_size < tokenizer.vocab_size:
        raise ModelLoadError("vocabulary mismatch: {} has vocab_size {} but {} has ids up to {}".format(
            source, config.vocab_size, files.tokenizer_json, tokenizer.vocab_size - 1))
