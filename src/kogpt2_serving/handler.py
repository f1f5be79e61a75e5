"""The SageMaker handler contract for KoGPT2: model_fn, input_fn, predict_fn, output_fn.

The SageMaker inference toolkit (and our MMS handler service,
:mod:`kogpt2_serving.handler_service`) calls these; a user's ``inference.py`` may override
any of them, by the toolkit's usual rule. Each takes an optional trailing ``context`` (the
toolkit passes it when a function has one parameter more than the contract).

- ``model_fn(model_dir)`` -> :class:`ServingModel`: loads once per process (the stock MXNet
  toolkit calls it twice per worker), chooses threads before MXNet starts, and warms up so
  the first request does not pay for graph building.
- ``input_fn(body, content_type)`` -> :class:`~kogpt2_serving.codec.Payload` (see
  :mod:`kogpt2_serving.codec` for the request shapes).
- ``predict_fn(payload, model)`` -> :class:`~kogpt2_serving.codec.Prediction`.
- ``output_fn(prediction, accept)`` -> ``(body bytes, content type)``.

Errors are :class:`~kogpt2_serving.errors.ServingError` subclasses carrying the HTTP status.
For the stock MXNet toolkit (which wants ``model_fn`` + ``transform_fn`` in one module) see
:mod:`kogpt2_serving.mxnet_entry`.

Worker settings come from the environment (the server sets them; names below):
``KOGPT2_DEVICE`` (auto | cpu | gpu | gpu:N), ``KOGPT2_DTYPE`` (float32 | float16 on a GPU |
bfloat16 weights on a CPU), ``SAGEMAKER_MODEL_SERVER_WORKERS`` (threads
per worker = cores // workers; default one worker per core, as in SageMaker),
``KOGPT2_THREADS`` (explicit threads per worker), ``SAGEMAKER_DEFAULT_INVOCATIONS_ACCEPT``.
The MMS worker sets ``OMP_NUM_THREADS=1`` when it is unset, which then reads as an explicit
choice: ``kogpt2-serving serve`` passes ``KOGPT2_THREADS``; elsewhere set it yourself.
"""
import logging
import os
import sys
import threading
import time
from typing import NamedTuple

from . import codec
from .device import configure_threads, cpu_count
from .errors import ServingError
from .model_dir import or_demo_model
from .params import GenerationParameters

log = logging.getLogger(__name__)

DEVICE_ENV = "KOGPT2_DEVICE"
DTYPE_ENV = "KOGPT2_DTYPE"
WORKERS_ENV = "SAGEMAKER_MODEL_SERVER_WORKERS"
DEFAULT_ACCEPT_ENV = "SAGEMAKER_DEFAULT_INVOCATIONS_ACCEPT"
MAX_BATCH_ROWS = 16  # decode rows per shared batch: bounds KV-cache memory (~75 MB/row at 1024 positions)
WARMUP_PROMPT = "안녕하세요"


class ServingModel(NamedTuple):
    """What model_fn returns: the generator and what it was built from."""

    generator: object  # generation.Generator
    loaded: object  # loader.LoadedModel

    @property
    def tokenizer(self):
        return self.loaded.tokenizer

    @property
    def config(self):
        return self.loaded.config

    @property
    def device(self):
        return self.loaded.ctx


_models = {}
_models_lock = threading.Lock()


def model_fn(model_dir, context=None):
    """Load (once per process and model directory/device) and warm up. A model directory with
    no model files at all (model.tar.gz with only code/) serves the shipped demo model."""
    model_dir = or_demo_model(model_dir, log)
    device = _device(context)
    dtype = os.environ.get(DTYPE_ENV) or "float32"
    key = (os.path.abspath(model_dir), device, dtype)
    with _models_lock:
        if key not in _models:
            _models[key] = _load(model_dir, device, dtype)
        return _models[key]


def input_fn(input_data, content_type, context=None):
    """Body (str or bytes) + Content-Type -> Payload; 400/413/415 errors name the problem."""
    return codec.decode_payload(input_data, content_type)


def predict_fn(data, model, context=None):
    """Payload -> Prediction."""
    outcome = predict_batch([data], model)[0]
    if isinstance(outcome, ServingError):
        raise outcome
    return outcome


def output_fn(prediction, accept, context=None):
    """Prediction -> (body, content type) for the Accept header (406 when unsupported)."""
    return codec.encode_prediction(prediction, codec.choose_accept(accept, default_accept()))


def predict_batch(payloads, model):
    """Several payloads (e.g. an MMS batch) -> one Prediction or ServingError per payload.

    Prompts are checked per payload first, so a bad one fails only its own request; the
    rest share decode steps through Generator.generate_many, at most MAX_BATCH_ROWS rows
    (prompts x num_return_sequences) at a time. `seconds` of a request is the time of the
    batches its prompts were decoded in.
    """
    generator = model.generator
    outcomes = [None] * len(payloads)
    jobs = []  # (payload index, request index, prompt)
    for p, payload in enumerate(payloads):
        try:
            for prompt in payload.prompts:
                generator.encode(prompt.text, prompt.params)
        except ServingError as e:
            outcomes[p] = e
            continue
        for r, request in enumerate(payload.requests):
            jobs.extend((p, r, prompt) for prompt in request.prompts)
    results, seconds = {}, [0.0] * len(payloads)
    for chunk in _chunks(jobs):
        started = time.time()
        sequences = generator.generate_many([(prompt.text, prompt.params) for _, _, prompt in chunk])
        elapsed = time.time() - started
        for (p, r, _), seqs in zip(chunk, sequences):
            results.setdefault((p, r), []).append(seqs)
        for p in {p for p, _, _ in chunk}:
            seconds[p] += elapsed
    for p, payload in enumerate(payloads):
        if outcomes[p] is None:
            answers = tuple(codec.Answer(request, results[(p, r)], seconds[p])
                            for r, request in enumerate(payload.requests))
            outcomes[p] = codec.Prediction(answers, payload.lines)
    return outcomes


def _chunks(jobs):
    chunk, rows = [], 0
    for job in jobs:
        n = job[2].params.num_return_sequences
        if chunk and rows + n > MAX_BATCH_ROWS:
            yield chunk
            chunk, rows = [], 0
        chunk.append(job)
        rows += n
    if chunk:
        yield chunk


def default_accept():
    return os.environ.get(DEFAULT_ACCEPT_ENV) or codec.JSON


def workers_from_env():
    """SAGEMAKER_MODEL_SERVER_WORKERS, or one worker per core (SageMaker's default)."""
    value = os.environ.get(WORKERS_ENV, "")
    return int(value) if value.isdigit() and int(value) > 0 else cpu_count()


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
    from .generation import Generator
    from .loader import load_model

    loaded = load_model(model_dir, device=device, dtype=dtype)
    model = ServingModel(Generator(loaded), loaded)
    started = time.time()
    model.generator.generate([WARMUP_PROMPT], GenerationParameters(max_new_tokens=4))
    log.info("warm-up generation took %.2f s", time.time() - started)
    return model
