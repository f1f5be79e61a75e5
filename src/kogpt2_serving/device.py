"""Device, dtype and CPU-thread choices.

Threads matter more than anything else on CPU: unless `OMP_NUM_THREADS` is set, MXNet sizes
its OpenMP pool to half the processors (1 thread on a 2-vCPU host), and the SageMaker MXNet
toolkit forces `OMP_NUM_THREADS=1`; either nearly halves decode speed on 2 cores. Each server
worker is a process with its own pool, so we give each `cores // workers` threads (at least 1),
unless the operator set `KOGPT2_THREADS` or `OMP_NUM_THREADS` explicitly. Call
:func:`configure_threads` before MXNet is imported; it also applies the count at runtime in
case MXNet is already loaded.

Host<->device copies of more than MXNET_CPU_PARALLEL_SIZE elements run an OpenMP loop on the
calling (Python) thread, which starts a second OpenMP team beside the engine's. Its threads
spin between regions and steal the cores from decoding: measured here, loading weights from
NumPy made every later decode step 2x slower, and batch-8 logits copies do the same. We
raise the threshold so those copies stay single-threaded.
"""
import logging
import os
import sys

from .errors import ModelLoadError

log = logging.getLogger(__name__)

DEVICES = ("auto", "cpu", "gpu")
SERIAL_HOST_COPIES = "2000000000"  # MXNET_CPU_PARALLEL_SIZE: no OpenMP team on the Python thread
_configured = []


def cpu_count():
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def threads_per_worker(workers=1, cores=None):
    return max(1, (cores or cpu_count()) // max(1, workers))


def configure_threads(workers=1, override=None):
    """Choose and apply the OpenMP thread count for this process; returns it.

    Precedence: `override` argument, `KOGPT2_THREADS`, an explicit `OMP_NUM_THREADS`, then
    cores // workers.
    """
    explicit = override or os.environ.get("KOGPT2_THREADS") or os.environ.get("OMP_NUM_THREADS")
    threads = int(explicit) if explicit else threads_per_worker(workers)
    os.environ["OMP_NUM_THREADS"] = str(threads)
    os.environ.setdefault("MXNET_CPU_PARALLEL_SIZE", SERIAL_HOST_COPIES)
    _configured[:] = [threads]
    if "mxnet" in sys.modules:  # already loaded: its pool was sized at import
        import ctypes

        import mxnet as mx

        mx.base._LIB.MXSetNumOMPThreads(ctypes.c_int(threads))
    log.info("using %d CPU thread(s) per worker (%d core(s), %d worker(s))", threads, cpu_count(), workers)
    return threads


def ensure_threads_configured():
    """configure_threads() with defaults, unless this process already chose."""
    return _configured[0] if _configured else configure_threads()


def parse_device(spec):
    """'auto' | 'cpu' | 'gpu' | 'gpu:N' -> ('cpu'|'gpu'|'auto', index)."""
    name, _, index = str(spec).lower().partition(":")
    if name not in DEVICES or (index and not (index.isdigit() and name == "gpu")):
        raise ValueError("device must be auto, cpu, gpu or gpu:N, got {!r}".format(spec))
    return name, int(index or 0)


def choose_context(spec="auto"):
    """An MXNet context: a GPU when asked (or when one exists, for 'auto'), else the CPU."""
    import mxnet as mx

    name, index = parse_device(spec)
    gpus = mx.context.num_gpus()
    if name == "auto":
        name = "gpu" if gpus else "cpu"
    if name == "cpu":
        return mx.cpu()
    if index >= gpus:
        raise ModelLoadError("device {} requested but this MXNet build sees {} GPU(s)".format(spec, gpus))
    return mx.gpu(index)


DTYPES = ("float32", "float16", "bfloat16")


def check_dtype(dtype):
    """A known dtype name, whatever the device (what `serve` checks before starting)."""
    if dtype not in DTYPES:
        raise ValueError("dtype must be one of {}, got {!r}".format(", ".join(DTYPES), dtype))
    return dtype


def choose_dtype(ctx, dtype="float32"):
    """float32 everywhere; float16 only on a GPU (CPU kernels for it are slow or missing);
    bfloat16 weights only on a CPU whose MXNet runs bfloat16 products (oneDNN, MXNet >= 1.8)."""
    check_dtype(dtype)
    if dtype == "float16" and ctx.device_type != "gpu":
        raise ModelLoadError("float16 is only supported on a GPU; use float32 or bfloat16 on {}".format(ctx))
    if dtype == "bfloat16":
        if ctx.device_type != "cpu":
            raise ModelLoadError("bfloat16 weights are only supported on a CPU; use float16 on {}".format(ctx))
        problem = _bfloat16_problem()
        if problem:
            raise ModelLoadError("bfloat16 weights need MXNet's oneDNN bfloat16 kernels: {}".format(problem))
    return dtype


def _bfloat16_problem():
    """Why this MXNet cannot multiply in bfloat16 (None if it can): try one tiny product."""
    import mxnet as mx

    from .model import BFLOAT16

    try:
        x = mx.nd.amp_cast(mx.nd.ones((1, 2)), dtype=BFLOAT16)
        mx.nd.FullyConnected(x, x, no_bias=True, num_hidden=1).wait_to_read()
    except Exception as e:  # noqa: BLE001  (MXNet raises MXNetError, AttributeError or TypeError here)
        return "MXNet {} failed a bfloat16 product ({})".format(mx.__version__, str(e).strip().splitlines()[-1][:120])
    return None
