"""How many engine processes ``serve`` starts, on which devices, with how many CPU threads each.

One engine holds one copy of the weights and batches continuously on one device, so the
natural unit is one engine per device: one per visible GPU (``gpu:0``, ``gpu:1``, ...) when
the device is ``gpu`` or ``auto`` and GPUs exist, else one on the CPU. ``serve --engines N``
or ``KOGPT2_ENGINES=N|auto`` overrides the count. Several CPU engines split the cores
(``cores // N`` OpenMP threads each, at least 1), because OpenMP teams that share cores slow
each other down many times over (docs/serving.md, *Threads*).

The GPUs are counted without importing MXNet in the ``serve`` process (it never computes, and
its forked children must not inherit a CUDA context): with no NVIDIA driver node there is no
GPU; otherwise a short MXNet subprocess answers ``mx.context.num_gpus()``.
"""
import glob
import logging
import os
import subprocess
import sys
from typing import NamedTuple, Optional, Tuple

from ..model.device import cpu_count, parse_device
from ..settings import ENGINES_ENV, SettingError, explicit_threads

log = logging.getLogger(__name__)

MAX_ENGINES = 64  # far above any instance's GPUs; a CPU engine per core pair is already plenty
AUTO = "auto"
NVIDIA_NODES = ("/proc/driver/nvidia/gpus/*", "/dev/nvidia[0-9]*")  # present wherever the driver sees a GPU
COUNT_GPUS = "import mxnet as mx; print(mx.context.num_gpus())"
COUNT_TIMEOUT = 60.0  # s: importing MXNet with CUDA takes a few seconds, initialising the driver more


class EnginePlanError(SettingError):
    """The engines asked for cannot be started here (a start-up error)."""


class EnginePlan(NamedTuple):
    devices: Tuple[str, ...]  # one per engine: "cpu" or "gpu:N", what each engine's --device gets
    threads: Optional[int]  # OpenMP threads per engine; None: the operator chose (KOGPT2_THREADS / OMP_NUM_THREADS)

    @property
    def count(self):
        return len(self.devices)


def parse_engines(value, name="--engines"):
    """'auto' (or empty) -> None; 'N' -> N within 1-MAX_ENGINES; anything else a clear error."""
    text = str(value).strip().lower() if value is not None else ""
    if text in ("", AUTO):
        return None
    if not text.isdecimal() or not 1 <= int(text) <= MAX_ENGINES:
        raise EnginePlanError("{} must be auto or an integer in 1-{}, got {!r}".format(name, MAX_ENGINES,
                                                                                      str(value)[:40]))
    return int(text)


def engines_setting(flag, environ=None):
    """The engine count asked for: the --engines flag, else KOGPT2_ENGINES, else auto (None)."""
    if flag is not None:
        return parse_engines(flag, "--engines")
    env = os.environ if environ is None else environ
    return parse_engines(env.get(ENGINES_ENV), ENGINES_ENV)


def plan_engines(device, engines=None, count_gpus=None, cores=None, environ=None):
    """device ('auto' | 'cpu' | 'gpu' | 'gpu:N') and the count asked for (None: auto) -> EnginePlan.
    `count_gpus` is called only when GPUs could be used (tests pass a fake)."""
    name, index = parse_device(device)
    has_index = ":" in str(device)
    if name == "cpu":
        devices = ("cpu",) * (engines or 1)
    elif has_index:
        if engines not in (None, 1):
            raise EnginePlanError("--device {} names one GPU, so it runs one engine, but {} engines were asked for "
                                  "(--engines / {}); use --device gpu for one engine per GPU".format(
                                      device, engines, ENGINES_ENV))
        devices = ("gpu:{}".format(index),)
    else:
        gpus = (count_gpus or gpu_count)()
        if name == "auto" and gpus == 0:
            devices = ("cpu",) * (engines or 1)  # auto without a GPU: the engines are told cpu
        elif gpus == 0:
            raise EnginePlanError("--device gpu was asked for but no GPU is visible here (no NVIDIA device, or "
                                  "MXNet sees none); use --device cpu or auto")
        else:
            wanted = engines or gpus
            if wanted > gpus:
                raise EnginePlanError("{} GPU engines were asked for (--engines / {}) but only {} GPU(s) are "
                                      "visible: one engine per GPU at most".format(wanted, ENGINES_ENV, gpus))
            devices = tuple("gpu:{}".format(i) for i in range(wanted))
    return EnginePlan(devices, _threads(len(devices), cores, environ))


def _threads(engines, cores, environ):
    """cores // engines for each engine, unless the operator set the threads (then theirs, as is)."""
    if explicit_threads(environ):
        return None
    return max(1, (cores or cpu_count()) // engines)


def oversubscribed(plan, environ=None, cores=None):
    """A warning when the operator's threads per engine x engines exceed the cores, else None."""
    explicit = explicit_threads(environ)
    cores = cores or cpu_count()
    if plan.threads is not None or not explicit.isdecimal() or int(explicit) * plan.count <= cores:
        return None
    return ("{} engines x {} threads (KOGPT2_THREADS / OMP_NUM_THREADS) exceed the {} cores: OpenMP teams that share "
            "cores slow each other down many times over; unset it to split the cores".format(
                plan.count, explicit, cores))


def gpu_count(nodes=NVIDIA_NODES, command=None, timeout=COUNT_TIMEOUT):
    """GPUs MXNet can use, without importing it here: 0 when no NVIDIA node exists, else what a
    short MXNet subprocess says (0, with a warning, when it fails or takes longer than `timeout`)."""
    if not any(glob.glob(pattern) for pattern in nodes):
        return 0
    command = command or [sys.executable, "-c", COUNT_GPUS]
    try:
        done = subprocess.run(command, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              timeout=timeout)
    except (OSError, subprocess.TimeoutExpired) as e:
        log.warning("counting GPUs with MXNet failed (%s): planning for none", e)
        return 0
    lines = done.stdout.decode("utf-8", "replace").split()
    if done.returncode != 0 or not lines or not lines[-1].isdecimal():
        log.warning("counting GPUs with MXNet failed (status %s: %s): planning for none", done.returncode,
                    done.stderr.decode("utf-8", "replace").strip().splitlines()[-1:] or "no output")
        return 0
    return int(lines[-1])


def describe(plan):
    """One log phrase: '2 engines (cpu, cpu), 1 thread each'."""
    threads = ("{} thread(s) each".format(plan.threads) if plan.threads is not None
               else "threads as KOGPT2_THREADS / OMP_NUM_THREADS say")
    return "{} engine(s) ({}), {}".format(plan.count, ", ".join(plan.devices), threads)
