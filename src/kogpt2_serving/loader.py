"""Load a model directory into a ready-to-decode :class:`LoadedModel`.

Order of checks: files present -> tokenizer readable -> checkpoint readable and in a known
layout -> config (file or inferred) agrees with the checkpoint's shapes and the tokenizer's
vocabulary. Each failure is a ModelLoadError naming the file, the key and both shapes.
"""
import logging
import time
from typing import NamedTuple

from . import checkpoint
from .config import read_config_file
from .device import choose_context, choose_dtype, ensure_threads_configured
from .errors import ModelLoadError
from .model_dir import ModelFiles, find_model_files
from .tokenizer import SentencePieceTokenizer

log = logging.getLogger(__name__)


class LoadedModel(NamedTuple):
    files: ModelFiles
    config: object  # GPT2Config
    tokenizer: SentencePieceTokenizer
    engine: object  # Engine
    ctx: object  # mx.Context
    dtype: str


def load_model(model_dir, device="auto", dtype="float32"):
    ensure_threads_configured()
    import mxnet as mx  # noqa: F401  (fail here, not mid-load, when MXNet is missing)

    from .engine import Engine
    from .model import GPT2Model

    started = time.time()
    files = find_model_files(model_dir)
    tokenizer = SentencePieceTokenizer(files.spiece)
    params = checkpoint.canonicalize(checkpoint.read_params(files.params), files.params)
    config = read_config_file(files.config) if files.config else checkpoint.infer_config(params, files.params)
    checkpoint.check_params(params, config, files.params)
    if config.vocab_size != tokenizer.vocab_size:
        raise ModelLoadError("vocabulary mismatch: {} has vocab_size {} but {} has {} pieces".format(
            files.config or files.params, config.vocab_size, files.spiece, tokenizer.vocab_size))
    ctx = choose_context(device)
    dtype = choose_dtype(ctx, dtype)
    model = GPT2Model(config)
    checkpoint.load_into(model, params, ctx, dtype)
    engine = Engine(model, ctx, dtype)
    log.info("loaded %s (%d layers, %d units, vocab %d) on %s as %s in %.1f s", files.params, config.n_layer,
             config.n_embd, config.vocab_size, ctx, dtype, time.time() - started)
    return LoadedModel(files, config, tokenizer, engine, ctx, dtype)
