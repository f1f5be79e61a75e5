"""One loaded, warmed-up model per process, model directory, device and dtype.

The stock MXNet toolkit calls ``model_fn`` twice per worker, and a user's ``inference.py`` may
call it again: loading a 500 MB checkpoint once per call would double a worker's memory and
start-up. Threads are chosen here, before MXNet is imported, from the worker count; the
first generation builds the graphs, so the warm-up keeps it out of the first request.
"""
import logging
import os
import sys
import threading
import time
from typing import NamedTuple

from ..files.default_model import or_demo_model
from ..generation.params import GenerationParameters
from ..model.device import configure_threads, cpu_count
from ..settings import DEVICE_ENV, DTYPE_ENV, WORKERS_ENV
from .batching import predict_batch

log = logging.getLogger(__name__)

WARMUP_PROMPT = "안녕하세요"


class ServingModel(NamedTuple):
    """What model_fn returns: the generator and what it was built from."""

    generator: object  # generation.Generator
    loaded: object  # files.loader.LoadedModel

    @property
    def tokenizer(self):
        return self.loaded.tokenizer

    @property
    def config(self):
        return self.loaded.config

    @property
    def device(self):
        return self.loaded.ctx

    def predict_batch(self, payloads, metas=None):
        """Payloads decoded together in this process (metas: the gateway's, unused here)."""
        return predict_batch(payloads, self)


_models = {}
_models_lock = threading.Lock()


def cached_model(model_dir, context=None):
    """The model for `model_dir` (the shipped demo model for a directory with no model files),
    on the device and dtype the environment names, loaded once."""
    model_dir = or_demo_model(model_dir, log)
    device = _device(context)
    dtype = os.environ.get(DTYPE_ENV) or "float32"
    key = (os.path.abspath(model_dir), device, dtype)
    with _models_lock:
        if key not in _models:
            _models[key] = _load(model_dir, device, dtype)
        return _models[key]


def workers_from_env():
    """SAGEMAKER_MODEL_SERVER_WORKERS, or one worker per core (SageMaker's default)."""
    value = os.environ.get(WORKERS_ENV, "")
    return int(value) if value.isdecimal() and int(value) > 0 else cpu_count()


def _device(context):
    """KOGPT2_DEVICE; with 'auto', the GPU MMS assigned to this worker, if any."""
    device = os.environ.get(DEVICE_ENV) or "auto"
    gpu_id = _gpu_id(context)
    if device == "auto" and gpu_id is not None:
        device = "gpu:{}".format(gpu_id)
    return device


def _gpu_id(context):
    properties = getattr(context, "system_properties", None) or {}
    gpu_id = properties.get("gpu_id")
    return gpu_id if isinstance(gpu_id, int) and gpu_id >= 0 else None


def _load(model_dir, device, dtype):
    if "mxnet" not in sys.modules:  # whoever imports MXNet first in a process chooses its threads
        configure_threads(workers_from_env())
    from ..files.loader import load_model
    from ..generation.generator import Generator

    loaded = load_model(model_dir, device=device, dtype=dtype)
    model = ServingModel(Generator(loaded), loaded)
    started = time.time()
    model.generator.generate([WARMUP_PROMPT], GenerationParameters(max_new_tokens=4))
    log.info("warm-up generation took %.2f s", time.time() - started)
    return model
