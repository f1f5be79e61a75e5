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

What this CPU and this MXNet can run (ISA flags, oneDNN's ISA cap, MXNet's build features,
whether bfloat16 products run) is detected once per process by :func:`capabilities`, never
guessed from flags alone: dtype choices, the tests' skips and the benchmarks' result headers
all read that one object. oneDNN 2.4 (MXNet 1.9.1) runs bfloat16 products natively on
AVX512-BF16, emulated on other AVX-512 CPUs, and not at all on AVX2-only ones; MXNet < 1.8
has no bfloat16 type.
"""
import logging
import os
import platform
import sys
from ..settings import explicit_threads
from typing import NamedTuple, Optional, Tuple

from ..errors import ModelLoadError

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
    explicit = override or explicit_threads()
    threads = int(explicit) if explicit else threads_per_worker(workers)
    os.environ["OMP_NUM_THREADS"] = str(threads)
    os.environ.setdefault("MXNET_CPU_PARALLEL_SIZE", SERIAL_HOST_COPIES)
    _configured[:] = [threads]
    if "mxnet" in sys.modules:  # already loaded: its pool was sized at import
        from .compat import set_omp_threads

        set_omp_threads(threads)
    log.info("using %d CPU thread(s) per worker (%d core(s), %d worker(s))", threads, cpu_count(), workers)
    return threads


def ensure_threads_configured():
    """configure_threads() with defaults, unless this process already chose."""
    return _configured[0] if _configured else configure_threads()


def parse_device(spec):
    """'auto' | 'cpu' | 'gpu' | 'gpu:N' -> ('cpu'|'gpu'|'auto', index)."""
    name, _, index = str(spec).lower().partition(":")
    if name not in DEVICES or (index and not (index.isdecimal() and name == "gpu")):
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


DTYPES = ("float32", "float16", "bfloat16", "int8")
WEIGHT_FORMATS = ("bfloat16", "int8")  # storage formats of the weights: the computation stays float32
USE_FLOAT32 = "use float32 instead (--dtype float32, or KOGPT2_DTYPE=float32 for a server's workers)"


def check_dtype(dtype):
    """A known dtype name, whatever the device (what `serve` checks before starting)."""
    if dtype not in DTYPES:
        raise ValueError("dtype must be one of {}, got {!r}".format(", ".join(DTYPES), dtype))
    return dtype


def choose_dtype(ctx, dtype="float32"):
    """float32 everywhere; float16 only on a GPU (CPU kernels for it are slow or missing);
    bfloat16 weights only on a CPU whose MXNet runs bfloat16 products (see :func:`capabilities`);
    int8 weights only on a CPU whose MXNet loads our kernels (MXNet >= 1.7, kernels.problem())."""
    check_dtype(dtype)
    if dtype == "float16" and ctx.device_type != "gpu":
        raise ModelLoadError("float16 is only supported on a GPU; use float32 or bfloat16 on {}".format(ctx))
    if dtype == "bfloat16":
        if ctx.device_type != "cpu":
            raise ModelLoadError("bfloat16 weights are only supported on a CPU; use float16 on {}".format(ctx))
        problem = capabilities().bfloat16_problem
        if problem:
            raise ModelLoadError("bfloat16 weights cannot run here: {}; {}".format(problem, USE_FLOAT32))
    if dtype == "int8":
        if ctx.device_type != "cpu":
            raise ModelLoadError("int8 weights are only supported on a CPU (their kernels are CPU code); "
                                 "use float16 on {}".format(ctx))
        from .. import kernels

        problem = kernels.problem()
        if problem:
            raise ModelLoadError("int8 weights cannot run here: {}; {}".format(problem, USE_FLOAT32))
    return dtype


def compute_dtype(dtype):
    """The dtype activations and the cache use: float32 under bfloat16 or int8 weights."""
    return "float32" if dtype in WEIGHT_FORMATS else dtype


def check_dtype_runs(dtype, device="auto"):
    """Before a server starts its workers: fail now, in the launcher, when the workers' own
    choose_dtype would refuse the dtype on this machine. float32 needs no check (and so no
    MXNet import in the launcher)."""
    check_dtype(dtype)
    if dtype != "float32":
        choose_dtype(choose_context(device), dtype)


# ---- what this CPU and this MXNet can run, detected once per process ----

CPUINFO = "/proc/cpuinfo"
ISA_FLAGS = ("avx2", "avx512f", "avx512_vnni", "avx512_bf16", "amx")
ISA_CAP_VARIABLES = ("DNNL_MAX_CPU_ISA", "MKLDNN_MAX_CPU_ISA")  # oneDNN >= 1.1 reads the first
# oneDNN's ISA names (oneDNN 2.4); the caps before AVX512_CORE leave it no bfloat16 kernel.
ONEDNN_ISAS = ("SSE41", "AVX", "AVX2", "AVX2_VNNI", "AVX512_MIC", "AVX512_MIC_4OPS", "AVX512_CORE",
               "AVX512_CORE_VNNI", "AVX512_CORE_BF16", "AVX512_CORE_AMX", "ALL")
BELOW_AVX512_CORE = ONEDNN_ISAS[:ONEDNN_ISAS.index("AVX512_CORE")]
_capabilities = []


class Capabilities(NamedTuple):
    """What this process can run. `cpu_flags` holds the ISA_FLAGS the CPU reports (None when
    /proc/cpuinfo is unreadable); `isa_cap` is "DNNL_MAX_CPU_ISA=..." when the operator capped
    oneDNN's dispatch, else ""; `bfloat16_problem` says why bfloat16 products cannot run ("" when
    they can: decided by running one, not by the flags)."""

    cpu_model: str
    cpu_flags: Optional[Tuple[str, ...]]
    isa_cap: str
    mxnet_version: str
    mxnet_features: Tuple[str, ...]
    bfloat16_problem: str

    @property
    def bfloat16(self):
        return not self.bfloat16_problem

    def as_dict(self):
        d = self._asdict()
        d.update(cpu_flags=None if self.cpu_flags is None else list(self.cpu_flags),
                 mxnet_features=list(self.mxnet_features), bfloat16=self.bfloat16)
        return d

    def summary(self):
        flags = "unknown flags" if self.cpu_flags is None else " ".join(self.cpu_flags) or "no AVX2/AVX-512"
        cap = ", " + self.isa_cap if self.isa_cap else ""
        bf16 = "bfloat16 runs" if self.bfloat16 else "no bfloat16 ({})".format(self.bfloat16_problem)
        return "{} ({}{}); MXNet {} ({}); {}".format(self.cpu_model, flags, cap, self.mxnet_version,
                                                      "oneDNN" if "MKLDNN" in self.mxnet_features else "no oneDNN",
                                                      bf16)


def capabilities():
    """This process's Capabilities, detected on first call (imports MXNet and runs two tiny
    products) and cached: every dtype choice, test skip and benchmark header reads the same."""
    if not _capabilities:
        _capabilities.append(detect_capabilities())
        log.info("runtime: %s", _capabilities[0].summary())
    return _capabilities[0]


def detect_capabilities():
    import mxnet as mx

    model, flags = cpu_model(), cpu_flags()
    cap, features = isa_cap(), mxnet_features()
    problem = bfloat16_problem(mx.__version__, features, flags, cap)
    return Capabilities(model, flags, cap, mx.__version__, features, problem)


def cpu_model():
    return _cpuinfo_field("model name") or platform.processor() or platform.machine() or "unknown CPU"


def cpu_flags():
    """The ISA_FLAGS this CPU reports ("amx" for any amx_* flag); None without /proc/cpuinfo."""
    reported = _cpuinfo_field("flags")
    if reported is None:
        return None
    reported = set(reported.split())
    if any(f.startswith("amx") for f in reported):
        reported.add("amx")
    return tuple(f for f in ISA_FLAGS if f in reported)


def _cpuinfo_field(name):
    """The first `name: value` line of /proc/cpuinfo (every core reports the same)."""
    try:
        with open(CPUINFO) as f:
            for line in f:
                key, _, value = line.partition(":")
                if key.strip() == name:
                    return value.strip()
    except OSError:
        pass
    return None


def isa_cap():
    """"DNNL_MAX_CPU_ISA=AVX2" when set (oneDNN reads it once, at its first primitive), else "".
    oneDNN only knows upper-case names and silently ignores others, so a value it would ignore
    is logged as such."""
    for name in ISA_CAP_VARIABLES:
        value = os.environ.get(name, "").strip()
        if value:
            if value not in ONEDNN_ISAS:
                log.warning("%s=%s is not one of oneDNN's ISA names (%s): oneDNN ignores it", name, value,
                            ", ".join(ONEDNN_ISAS))
            return "{}={}".format(name, value)
    return ""


def mxnet_features():
    """The enabled build features (MKLDNN, OPENMP, CUDA, ...); () where mx.runtime is missing."""
    import mxnet as mx

    try:
        return tuple(sorted(name for name, f in mx.runtime.Features().items() if f.enabled))
    except AttributeError:  # MXNet < 1.5 has no mx.runtime
        return ()


def bfloat16_problem(version, features, flags, cap):
    """Why bfloat16 products cannot run here, naming the missing piece ("" when they run)."""
    if not _bfloat16_type_exists():
        return "MXNet {} has no bfloat16 type (MXNet 1.8 added it)".format(version)
    if "MKLDNN" not in features:
        return "this MXNet {} build has no oneDNN (MKLDNN), which runs bfloat16 products".format(version)
    error = _bfloat16_product_error()
    if not error:
        return ""
    if cap and cap.partition("=")[2] in BELOW_AVX512_CORE:
        return "{} caps oneDNN below AVX-512, and its bfloat16 kernels need AVX-512".format(cap)
    if flags is not None and "avx512f" not in flags:
        return "this CPU ({}) has no AVX-512, which oneDNN's bfloat16 kernels need (AVX512-BF16 runs them " \
               "natively)".format(cpu_model())
    return "MXNet {} failed a bfloat16 product ({})".format(version, error)


def _bfloat16_type_exists():
    import mxnet as mx

    from .network import BFLOAT16

    try:
        mx.nd.amp_cast(mx.nd.ones((1, 2)), dtype=BFLOAT16).wait_to_read()
    except Exception:  # noqa: BLE001  (MXNetError for an unknown dtype; AttributeError without amp_cast)
        return False
    return True


def _bfloat16_product_error():
    """The last line of MXNet's error for one tiny bfloat16 product ("" when it runs)."""
    import mxnet as mx

    from .network import BFLOAT16

    try:
        x = mx.nd.amp_cast(mx.nd.ones((1, 2)), dtype=BFLOAT16)
        mx.nd.FullyConnected(x, x, no_bias=True, num_hidden=1).wait_to_read()
    except Exception as e:  # noqa: BLE001  (MXNetError from oneDNN: "could not create a primitive ...")
        return str(e).strip().splitlines()[-1][:160]
    return ""
