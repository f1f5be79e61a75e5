"""The SageMaker handler contract for KoGPT2: model_fn, input_fn, predict_fn, output_fn.

The SageMaker inference toolkit (and our MMS handler service,
:mod:`kogpt2_serving.handler_service`) calls these; a user's ``inference.py`` may override
any of them, by the toolkit's usual rule. Each takes an optional trailing ``context`` (the
toolkit passes it when a function has one parameter more than the contract).

- ``model_fn(model_dir)`` -> :class:`~kogpt2_serving.serving.model_cache.ServingModel`: loads
  once per process (:mod:`.model_cache`: the stock MXNet toolkit calls it twice per worker),
  chooses threads before MXNet starts, and warms up so the first request does not pay for
  graph building. Under ``kogpt2-serving serve`` with its engine (``KOGPT2_ENGINE_SOCKET`` set)
  it returns an :class:`~kogpt2_serving.serving.engine_client.EngineModel` instead: a light
  worker that holds only the tokenizer and sends generation to the engine process.
- ``input_fn(body, content_type)`` -> :class:`~kogpt2_serving.serving.codec.Payload` (see
  :mod:`kogpt2_serving.serving.codec` for the request shapes).
- ``predict_fn(payload, model)`` -> :class:`~kogpt2_serving.serving.codec.Prediction`.
- ``output_fn(prediction, accept)`` -> ``(body bytes, content type)``.

Errors are :class:`~kogpt2_serving.errors.ServingError` subclasses carrying the HTTP status.
For the stock MXNet toolkit (which wants ``model_fn`` + ``transform_fn`` in one module) see
:mod:`kogpt2_serving.mxnet_entry`.

Worker settings come from the environment (the server sets them; names below):
``KOGPT2_DEVICE`` (auto | cpu | gpu | gpu:N), ``KOGPT2_DTYPE`` (float32 | float16 on a GPU |
bfloat16 or int8 weights on a CPU), ``SAGEMAKER_MODEL_SERVER_WORKERS`` (threads
per worker = cores // workers; default one worker per core, as in SageMaker),
``KOGPT2_THREADS`` (explicit threads per worker), ``SAGEMAKER_DEFAULT_INVOCATIONS_ACCEPT``.
The MMS worker sets ``OMP_NUM_THREADS=1`` when it is unset, which then reads as an explicit
choice: ``kogpt2-serving serve`` passes ``KOGPT2_THREADS``; elsewhere set it yourself.
"""
import os

from ..errors import ServingError
from ..settings import DEFAULT_ACCEPT_ENV, ENGINE_SOCKET_ENV
from . import codec
from .model_cache import ServingModel, cached_model  # noqa: F401  (ServingModel: what model_fn returns)


def model_fn(model_dir, context=None):
    """Load (once per process and model directory/device) and warm up. A model directory with
    no model files at all (model.tar.gz with only code/) serves the shipped demo model."""
    engine_socket = os.environ.get(ENGINE_SOCKET_ENV)
    if engine_socket:
        from .engine_client import EngineModel

        return EngineModel(model_dir, engine_socket)
    return cached_model(model_dir, context)


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


def predict_batch(payloads, model, metas=None):
    """Several payloads -> one Prediction or ServingError each: decoded together in this process
    (serving.batching), or by the engine process (serving.engine_client)."""
    return model.predict_batch(payloads, metas)


def default_accept():
    """SAGEMAKER_DEFAULT_INVOCATIONS_ACCEPT: what Accept */* or none means."""
    return os.environ.get(DEFAULT_ACCEPT_ENV) or codec.JSON
