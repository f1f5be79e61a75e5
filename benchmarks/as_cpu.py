"""Run a command as on a smaller CPU class: every library in it sees only that class's features.

`DNNL_MAX_CPU_ISA` caps oneDNN (and our kernels) alone; ONNX Runtime reads no cap and keeps its
AMX or AVX-512 code, so a capped comparison pits our AVX2 code against its AVX-512 code. This
builds benchmarks/cpu_class.c (once, into benchmarks/.cache) and runs the command with it
preloaded: CPUID answers without the features above the class, so oneDNN, ONNX Runtime, NumPy,
glibc and our kernels all run that class's code, as on such a CPU, with this machine's memory
system. Child processes inherit it. It needs a CPU that can make CPUID fault (the cpuid_fault
flag: Intel since Ivy Bridge, and KVM guests), unless the CPU is of that class already (then the
command runs as it is).

Classes: avx2 (AMD EPYC Zen 2/3: ml.c5a, ml.c6a; Intel before Skylake-SP), avx512 (Skylake-SP:
first ml.c5), avx512_vnni (Cascade Lake, Ice Lake: ml.c5, ml.c6i), avx512_bf16 (Cooper Lake).

Usage: python benchmarks/as_cpu.py CLASS COMMAND [ARG...]
  e.g. python benchmarks/as_cpu.py avx2 python benchmarks/peers.py --peers onnxruntime,onnxruntime_int8
"""
import hashlib
import os
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
SOURCE = os.path.join(HERE, "cpu_class.c")
CACHE = os.path.join(HERE, ".cache")
CLASS_ENV = "KOGPT2_CPU_CLASS"
# The classes, smallest first, each with the /proc/cpuinfo flags a CPU of that class has (a CPU
# shows a class it has; "amx" only names the largest, which nothing hides).
CLASSES = (("avx2", ("avx2", "fma")), ("avx512", ("avx512f", "avx512bw", "avx512dq", "avx512vl")),
           ("avx512_vnni", ("avx512_vnni",)), ("avx512_bf16", ("avx512_bf16",)), ("amx", ("amx_tile", "amx_int8")))
SHOWN = [name for name, _ in CLASSES[:-1]]
# glibc chooses its string functions before any preloaded library runs: its own setting hides
# AVX-512 from it (an AVX2 CPU's memcpy is the AVX2 one).
GLIBC_WITHOUT_AVX512 = "glibc.cpu.hwcaps=-AVX512F,-AVX512VL,-AVX512BW,-AVX512DQ,-AVX512CD"
# oneDNN's names for the classes (the Makefile's ISA=...), and ours.
FROM_ONEDNN = {"AVX2": "avx2", "AVX2_VNNI": "avx2", "AVX512_CORE": "avx512", "AVX512_CORE_VNNI": "avx512_vnni",
               "AVX512_CORE_BF16": "avx512_bf16"}


def shim():
    """The built shim's path (built when missing or its source changed)."""
    with open(SOURCE, "rb") as f:
        digest = hashlib.sha256(f.read()).hexdigest()[:12]
    path = os.path.join(CACHE, "cpu_class_{}.so".format(digest))
    if not os.path.exists(path):
        os.makedirs(CACHE, exist_ok=True)
        partial = path + ".{}.tmp".format(os.getpid())
        compiler = os.environ.get("CC", "cc")
        try:
            done = subprocess.run([compiler, "-shared", "-fPIC", "-O2", SOURCE, "-o", partial, "-ldl"],
                                  stdout=subprocess.PIPE, stderr=subprocess.STDOUT, universal_newlines=True)
        except OSError as e:
            raise SystemExit("as_cpu: building {} needs a C compiler ({}: {}); set CC".format(
                SOURCE, compiler, e.strerror))
        if done.returncode != 0:
            raise SystemExit("as_cpu: building {} failed:\n{}".format(SOURCE, done.stdout.strip()))
        os.replace(partial, path)
    return path


def cpu_flags(cpuinfo="/proc/cpuinfo"):
    with open(cpuinfo) as f:
        for line in f:
            key, _, value = line.partition(":")
            if key.strip() == "flags":
                return set(value.split())
    return set()


def own_class(flags):
    """The largest class whose flags this CPU has, and every smaller one's ("pre-AVX2" if none)."""
    own = "pre-AVX2"
    for name, needs in CLASSES:
        if not all(f in flags for f in needs):
            break
        own = name
    return own


def class_problem(name, flags):
    """Why this CPU cannot show class `name` (None when it can)."""
    if name not in SHOWN:
        return "no CPU class {!r}: one of {}".format(name, ", ".join(SHOWN))
    own = own_class(flags)
    if own == "pre-AVX2" or SHOWN.index(name) > [n for n, _ in CLASSES].index(own):
        return "this CPU is of class {}: it cannot show {}".format(own, name)
    if own != name and "cpuid_fault" not in flags:
        return ("this CPU (or its hypervisor) cannot make CPUID fault (no cpuid_fault flag): it cannot hide its "
                "{} features".format(own))
    return None


def environment(name, base=None):
    """`base` (default os.environ) running as class `name`: the shim first in LD_PRELOAD."""
    env = dict(os.environ if base is None else base)
    preload = [shim()] + ([env["LD_PRELOAD"]] if env.get("LD_PRELOAD") else [])
    env["LD_PRELOAD"] = " ".join(preload)
    env[CLASS_ENV] = name
    if name == "avx2":
        env["GLIBC_TUNABLES"] = ":".join(filter(None, [env.get("GLIBC_TUNABLES"), GLIBC_WITHOUT_AVX512]))
    return env


def shown_class(environ=None):
    """The class this process runs as under the shim (None when it runs as its CPU)."""
    environ = os.environ if environ is None else environ
    preloaded = any(os.path.basename(p).startswith("cpu_class_") for p in environ.get("LD_PRELOAD", "").split())
    return environ.get(CLASS_ENV) if preloaded else None


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) < 2 or argv[0] in ("-h", "--help"):
        print(__doc__)
        return 0 if argv and argv[0] in ("-h", "--help") else 2
    name = FROM_ONEDNN.get(argv[0], argv[0])
    flags = cpu_flags()
    problem = class_problem(name, flags)
    if problem:
        raise SystemExit("as_cpu: " + problem)
    try:  # a CPU of that class already is one: nothing to hide
        os.execvpe(argv[1], argv[1:], environment(name) if own_class(flags) != name else dict(os.environ))
    except OSError as e:
        raise SystemExit("as_cpu: cannot run {}: {}".format(argv[1], e.strerror))


if __name__ == "__main__":
    sys.exit(main())
