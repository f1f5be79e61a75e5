"""Every environment variable the package reads, by name, and the request limits parsed from it.

Names (who reads them):

- ``KOGPT2_DEVICE``, ``KOGPT2_DTYPE``: the worker's device and weight format (serving.handler);
- ``KOGPT2_THREADS``, else ``OMP_NUM_THREADS``: OpenMP threads per process (model.device);
- ``SAGEMAKER_MODEL_SERVER_WORKERS``, ``SAGEMAKER_BIND_TO_PORT``,
  ``SAGEMAKER_DEFAULT_INVOCATIONS_ACCEPT``: the toolkit's meanings (serving, cli.serve);
- ``KOGPT2_BATCH_SIZE``, ``KOGPT2_MAX_BATCH_DELAY_MS``: MMS batching (cli.serve);
- ``KOGPT2_MAX_REQUEST_ROWS``, ``KOGPT2_MAX_REQUEST_TOKENS``: the per-request budget (below);
- ``KOGPT2_ENGINE`` (on | off), ``KOGPT2_MAX_BATCH_ROWS``, ``KOGPT2_MAX_CACHE_TOKENS``,
  ``KOGPT2_MAX_QUEUE``, ``KOGPT2_REQUEST_TIMEOUT_SECONDS``, ``KOGPT2_DRAIN_SECONDS``,
  ``KOGPT2_WATCHDOG_SECONDS``: the engine process, its continuous batching
  (:class:`EngineLimits`), shutdown and the watchdog (cli.serve);
- ``KOGPT2_ENGINES`` (N | auto): how many engine processes ``serve`` starts (serving.engine_plan);
- ``KOGPT2_ENGINE_SOCKET``: set by ``serve`` for the light workers: the engines' socket paths,
  joined by ``os.pathsep`` (serving.engine_pool).

The rest of sagemaker-inference's ``SAGEMAKER_*`` variables are read through its own
``Environment`` (serving.server).

**Request limits.**
One HTTP request may carry up to 64 prompts, each with up to 16 returned sequences (or beams)
and up to 1024 new tokens: without a budget a single request could hold a worker for minutes.
The budget counts what decoding really costs: rows (a prompt decodes ``num_beams`` rows with
beam search, else ``num_return_sequences``) and new tokens (rows x ``max_new_tokens``), summed
over every prompt of the request (all inputs and jsonlines lines together).

Defaults: 64 rows and 4096 new tokens per request. At KoGPT2 size on 2 CPU cores that is at
most about half a minute of decoding, inside SageMaker's 60 s per request (see
docs/serving.md, "Limits"); raise them on faster instances.
"""
import os
from typing import Mapping, NamedTuple, Optional

from .errors import ServingError

DEVICE_ENV = "KOGPT2_DEVICE"
DTYPE_ENV = "KOGPT2_DTYPE"
THREADS_ENV = "KOGPT2_THREADS"
OMP_THREADS_ENV = "OMP_NUM_THREADS"
WORKERS_ENV = "SAGEMAKER_MODEL_SERVER_WORKERS"
BIND_TO_PORT_ENV = "SAGEMAKER_BIND_TO_PORT"
DEFAULT_ACCEPT_ENV = "SAGEMAKER_DEFAULT_INVOCATIONS_ACCEPT"
PROGRAM_ENV = "SAGEMAKER_PROGRAM"  # the user module (default inference)
BASE_DIR_ENV = "SAGEMAKER_BASE_DIR"  # /opt/ml
BATCH_SIZE_ENV = "KOGPT2_BATCH_SIZE"
BATCH_DELAY_ENV = "KOGPT2_MAX_BATCH_DELAY_MS"
MAX_REQUEST_ROWS_ENV = "KOGPT2_MAX_REQUEST_ROWS"
MAX_REQUEST_TOKENS_ENV = "KOGPT2_MAX_REQUEST_TOKENS"
ENGINE_ENV = "KOGPT2_ENGINE"
FRONTEND_ENV = "KOGPT2_FRONTEND"
ENGINES_ENV = "KOGPT2_ENGINES"
ENGINE_SOCKET_ENV = "KOGPT2_ENGINE_SOCKET"
MAX_BATCH_ROWS_ENV = "KOGPT2_MAX_BATCH_ROWS"
MAX_CACHE_TOKENS_ENV = "KOGPT2_MAX_CACHE_TOKENS"
MAX_QUEUE_ENV = "KOGPT2_MAX_QUEUE"
REQUEST_TIMEOUT_ENV = "KOGPT2_REQUEST_TIMEOUT_SECONDS"
DRAIN_ENV = "KOGPT2_DRAIN_SECONDS"
WATCHDOG_ENV = "KOGPT2_WATCHDOG_SECONDS"


class SettingError(ServingError):
    """An environment variable holds a value this package cannot use (a start-up error)."""

    kind = "setting_error"


class RequestLimits(NamedTuple):
    max_rows: int = 64  # decode rows per request
    max_new_tokens: int = 4096  # rows x max_new_tokens, summed over the request


class EngineLimits(NamedTuple):
    """The engine's continuous batching (see docs/serving.md, "Limits").

    16 rows: past about 16 rows a decode step on 2-8 CPU cores stops being bound by reading the
    weights, so more rows add latency faster than throughput. 16384 cache slots: 1.2 GB of float32
    KV cache at KoGPT2 size (12 layers x 2 x 768 x 4 bytes = 72 KiB per slot), e.g. 16 rows of
    1024 positions. 64 waiting requests: two full batches of 32 workers. 50 s: SageMaker gives a
    request 60 s, and the answer still has to be rendered and sent."""

    max_rows: int = 16  # decode rows in one step
    max_cache_tokens: int = 16384  # rows x cache capacity, summed over the batch
    max_queue: int = 64  # requests waiting for a decode slot; beyond: 503 queue_full
    request_timeout: float = 50.0  # s from arrival; then the answer ends with finish_reason time_limit


def engine_limits(environ: Optional[Mapping[str, str]] = None) -> EngineLimits:
    env = os.environ if environ is None else environ
    defaults = EngineLimits()
    return EngineLimits(
        max_rows=_positive_int(env, MAX_BATCH_ROWS_ENV, defaults.max_rows),
        max_cache_tokens=_positive_int(env, MAX_CACHE_TOKENS_ENV, defaults.max_cache_tokens),
        max_queue=_positive_int(env, MAX_QUEUE_ENV, defaults.max_queue),
        request_timeout=_positive_seconds(env, REQUEST_TIMEOUT_ENV, defaults.request_timeout),
    )


def drain_seconds(environ: Optional[Mapping[str, str]] = None) -> float:
    """KOGPT2_DRAIN_SECONDS (default 20): how long SIGTERM lets requests in flight finish. Keep it
    below the container runtime's stop grace period (docker stop: 10 s unless -t)."""
    return _positive_seconds(os.environ if environ is None else environ, DRAIN_ENV, 20.0, zero_ok=True)


def watchdog_seconds(environ: Optional[Mapping[str, str]] = None) -> float:
    """KOGPT2_WATCHDOG_SECONDS (default 10): seconds between the watchdog's probes; 0 turns it off."""
    return _positive_seconds(os.environ if environ is None else environ, WATCHDOG_ENV, 10.0, zero_ok=True)


def explicit_threads(environ: Optional[Mapping[str, str]] = None) -> str:
    """The operator's thread setting as written: KOGPT2_THREADS, else OMP_NUM_THREADS ('' when
    neither; OMP_NUM_THREADS may also be a list such as '2,1')."""
    env = os.environ if environ is None else environ
    return env.get(THREADS_ENV) or env.get(OMP_THREADS_ENV) or ""


def request_limits(environ: Optional[Mapping[str, str]] = None) -> RequestLimits:
    """The limits set in the environment (or `environ`), each a positive integer."""
    env = os.environ if environ is None else environ
    defaults = RequestLimits()
    return RequestLimits(
        max_rows=_positive_int(env, MAX_REQUEST_ROWS_ENV, defaults.max_rows),
        max_new_tokens=_positive_int(env, MAX_REQUEST_TOKENS_ENV, defaults.max_new_tokens),
    )


def _positive_seconds(env, name, default, zero_ok=False):
    value = env.get(name, "").strip()
    if not value:
        return default
    try:
        seconds = float(value)
    except ValueError:
        seconds = float("nan")
    if not (seconds > 0 or (zero_ok and seconds == 0)) or seconds == float("inf"):
        raise SettingError("{} must be a number of seconds {} 0, got {!r}".format(
            name, ">=" if zero_ok else ">", value[:40]))
    return seconds


def _positive_int(env, name, default):
    value = env.get(name, "").strip()
    if not value:
        return default
    if not value.isdecimal() or int(value) < 1:
        raise SettingError("{} must be a positive integer, got {!r}".format(name, value[:40]))
    return int(value)
