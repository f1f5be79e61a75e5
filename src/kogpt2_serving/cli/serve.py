"""`kogpt2-serving serve`: a real Multi Model Server with this package's handler service.

The same stack a SageMaker container runs on `serve`, runnable locally without root paths
(see :mod:`kogpt2_serving.serving.server`). Flags win over the SAGEMAKER_* variables, which win over
the defaults.

By default one engine process per device (one per visible GPU, else one on the CPU; ``--engines``)
holds the model and batches continuously, and MMS runs LIGHT_WORKERS light workers (parse,
validate, render; no MXNet), so that many requests can be in flight. ``--engine off`` (or a user ``inference.py`` that defines ``model_fn``,
``predict_fn`` or ``transform_fn``, or ``--batch-size`` > 1) gives the in-process workers of
before: each holds its own model copy with cores // workers threads, default one worker.
"""
import logging
import os

from ..errors import ServingError
from ..files.default_model import resolve_model_dir
from ..model.device import check_dtype, check_dtype_runs, parse_device
from ..serving.engine_plan import MAX_ENGINES, engines_setting
from ..serving.handler_functions import in_process_reason, overrides_reason
from ..serving.server import MAX_PORT, ServerConfig, in_sagemaker_container, serve
from ..settings import (BATCH_DELAY_ENV, BATCH_SIZE_ENV, BIND_TO_PORT_ENV, DTYPE_ENV, ENGINE_ENV, ENGINES_ENV,
                        FRONTEND_ENV, WORKERS_ENV, drain_seconds, engine_limits, request_limits, watchdog_seconds)

log = logging.getLogger(__name__)

LIGHT_WORKERS = 32  # requests in flight at once with the engine: each light worker holds one


def add_arguments(parser):
    parser.add_argument("--model-dir", default=None,
                        help="model directory (*.params + *.spiece, or a HF GPT-2 directory); default: SageMaker's "
                             "model directory when it holds a model, else the demo model shipped with the package")
    parser.add_argument("--host", default=None,
                        help="address to listen on (default 127.0.0.1; 0.0.0.0 inside SageMaker)")
    parser.add_argument("--port", type=int, default=None,
                        help="port for POST /invocations and GET /ping (nothing else is served there), 1-{} "
                             "(default $SAGEMAKER_BIND_TO_PORT or 8080)".format(MAX_PORT))
    parser.add_argument("--workers", type=int, default=None,
                        help="MMS worker processes: light ones with the engine (default {}), else each with its own "
                             "model copy (default 1); $SAGEMAKER_MODEL_SERVER_WORKERS if set".format(LIGHT_WORKERS))
    parser.add_argument("--engine", choices=("on", "off"), default=None,
                        help="on: one engine process with continuous batching behind light workers; off: the model "
                             "in every worker (default ${} or on)".format(ENGINE_ENV))
    parser.add_argument("--engines", default=None, metavar="N|auto",
                        help="engine processes, each with its own copy of the weights on its own device: auto = "
                             "one per visible GPU (gpu:0, gpu:1, ...) with --device auto|gpu, else one on the CPU; "
                             "N (1-{}) CPU engines split the cores (default ${} or auto)".format(
                                 MAX_ENGINES, ENGINES_ENV))
    parser.add_argument("--frontend", choices=("mms", "native"), default=None,
                        help="mms: Multi Model Server with light workers (the SageMaker toolkit's server); native: an "
                             "aiohttp frontend on the same engine that streams tokens (\"stream\": true) and serves "
                             "TGI's /generate, /generate_stream, /info, /health (default ${} or mms)".format(
                                 FRONTEND_ENV))
    parser.add_argument("--device", default="auto", help="auto | cpu | gpu | gpu:N (default auto)")
    parser.add_argument("--dtype", default=None,
                        help="float32 | float16 (GPU) | bfloat16 (CPU with AVX-512: weights in bfloat16, logits within "
                             "~1%%; 1.3-1.5x faster decoding measured on AVX512-BF16) | int8 (CPU, MXNet >= 1.7: "
                             "weights in int8 with per-output scales, our own kernels) (default ${} or float32)".format(
                                 DTYPE_ENV))
    parser.add_argument("--batch-size", type=int, default=None,
                        help="MMS batching of in-process workers (--engine off; experimental, served at "
                             "/predictions/model): up to N concurrent requests share decode steps "
                             "(default ${} or 1 = off)".format(BATCH_SIZE_ENV))
    parser.add_argument("--max-batch-delay", type=int, default=None, metavar="MS",
                        help="how long MMS waits to fill a batch (default ${} or 50)".format(BATCH_DELAY_ENV))
    parser.add_argument("--log-file", default=None, help="write Multi Model Server logs here instead of stdout")
    parser.add_argument("--install-requirements", action="store_true",
                        help="pip install <model-dir>/code/requirements.txt before starting, as the container does")


def config_from_args(args):
    """Flags > SAGEMAKER_* / KOGPT2_* variables > defaults, checked."""
    model_dir = resolve_model_dir(args.model_dir, log)
    batch_size = args.batch_size if args.batch_size is not None else _env_int(BATCH_SIZE_ENV, 1)
    engine = _engine_mode(args, model_dir, batch_size)
    engines = _engines(args, engine)
    frontend = _frontend(args, model_dir, engine)
    default_workers = LIGHT_WORKERS if engine else 1
    workers = args.workers or _env_int(WORKERS_ENV, default_workers)
    if frontend == "native":
        if args.workers is not None:
            log.warning("--workers %d is for Multi Model Server: the native frontend has no workers", args.workers)
    elif args.workers is None and WORKERS_ENV not in os.environ:
        log.info("using %d %sworker(s) (--workers N or SAGEMAKER_MODEL_SERVER_WORKERS to change)", workers,
                 "light " if engine else "")
    config = ServerConfig(
        model_dir=model_dir,
        host=args.host or ("0.0.0.0" if in_sagemaker_container() else "127.0.0.1"),
        port=args.port if args.port is not None else _env_int(BIND_TO_PORT_ENV, 8080),
        workers=workers,
        device=args.device,
        dtype=args.dtype or os.environ.get(DTYPE_ENV) or "float32",
        batch_size=batch_size,
        max_batch_delay=args.max_batch_delay if args.max_batch_delay is not None else _env_int(BATCH_DELAY_ENV, 50),
        log_file=args.log_file,
        install_requirements=args.install_requirements,
        engine=engine,
        engines=engines,
        watchdog_interval=watchdog_seconds(),
        frontend=frontend,
    )
    for name in ("workers", "batch_size"):
        if getattr(config, name) < 1:
            raise ServingError("--{} must be >= 1, got {}".format(name.replace("_", "-"), getattr(config, name)))
    try:
        check_dtype(config.dtype)
    except ValueError as e:
        raise ServingError("--" + str(e))
    try:
        parse_device(config.device)
    except ValueError as e:
        raise ServingError(str(e))
    check_dtype_runs(config.dtype, config.device)  # e.g. bfloat16 on an AVX2 CPU: refused here, not in each worker
    if config.max_batch_delay < 0:
        raise ServingError("--max-batch-delay must be >= 0 ms, got {}".format(config.max_batch_delay))
    limits = request_limits()  # the workers read them per request: refuse a bad value now
    log.info("per-request budget: %d decode rows, %d new tokens", limits.max_rows, limits.max_new_tokens)
    engine_limits(), drain_seconds()  # likewise the engine's and the shutdown's
    return config


def _engine_mode(args, model_dir, batch_size):
    """Whether to run the engine process: the flag, else KOGPT2_ENGINE, else on, except where
    a user's code or MMS batching needs the model in each worker (the log says why)."""
    choice = args.engine or os.environ.get(ENGINE_ENV, "").strip().lower() or None
    if choice not in (None, "on", "off"):
        raise ServingError("{} must be on or off, got {!r}".format(ENGINE_ENV, choice[:20]))
    if choice == "off":
        return False
    if batch_size > 1:
        if choice == "on":
            raise ServingError("--batch-size is MMS batching for in-process workers (--engine off); the engine "
                               "batches continuously (KOGPT2_MAX_BATCH_ROWS sets its rows per step)")
        log.info("--batch-size %d: MMS batching with the model in every worker (no engine process)", batch_size)
        return False
    reason = in_process_reason(model_dir)
    if reason:
        log.info("%s: the model runs in every worker (each holds its own copy), not in an engine process", reason)
        return False
    return True


def _engines(args, engine):
    """The engine count asked for (None: auto), checked now even when it is not used."""
    engines = engines_setting(getattr(args, "engines", None))
    if not engine and getattr(args, "engines", None) is not None:
        log.warning("--engines %s is ignored: the model runs in every worker (no engine process)", args.engines)
    return engines


def _frontend(args, model_dir, engine):
    """mms or native: the flag, else KOGPT2_FRONTEND, else mms. The native frontend runs the
    package's handling on the engine: refused with what stands in its way."""
    choice = args.frontend or os.environ.get(FRONTEND_ENV, "").strip().lower() or "mms"
    if choice not in ("mms", "native"):
        raise ServingError("{} must be mms or native, got {!r}".format(FRONTEND_ENV, choice[:20]))
    if choice == "native":
        reason = overrides_reason(model_dir)
        if reason:
            raise ServingError("--frontend native runs the package's own request handling, not a user's inference.py "
                               "({}): use --frontend mms".format(reason))
        if not engine:
            raise ServingError("--frontend native needs the engine process (--engine on, no --batch-size)")
        try:
            import aiohttp  # noqa: F401
        except ImportError:
            raise ServingError("--frontend native needs aiohttp: install kogpt2-serving[server]")
    return choice


def run(args):
    return serve(config_from_args(args))


def _env_int(name, default):
    value = os.environ.get(name)
    if not value:
        return default
    try:
        return int(value)
    except ValueError:
        raise ServingError("{} must be an integer, got {!r}".format(name, value))
