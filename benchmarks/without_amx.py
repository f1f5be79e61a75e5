"""Run a command with AMX refused to every library in it: the AVX-512 VNNI class on an AMX CPU.

`DNNL_MAX_CPU_ISA=AVX512_CORE_VNNI` caps oneDNN (and our kernels) below AMX, but ONNX Runtime
reads no such setting and keeps using AMX, so a capped comparison pits our VNNI code against
ONNX Runtime's AMX code. This builds benchmarks/no_amx.c (once, into benchmarks/.cache) and runs
the command with it preloaded: every library's request for AMX's tile state is refused, and each
runs its AVX-512 VNNI code, as on a CPU without AMX (Ice Lake, Cascade Lake: ml.c6i, most
ml.c5). The memory system stays this machine's.

Usage: python benchmarks/without_amx.py COMMAND [ARG...]
  e.g. python benchmarks/without_amx.py python benchmarks/peers.py --peers onnxruntime,onnxruntime_int8
"""
import hashlib
import os
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
SOURCE = os.path.join(HERE, "no_amx.c")
CACHE = os.path.join(HERE, ".cache")


def shim():
    """The built shim's path (built when missing or its source changed)."""
    with open(SOURCE, "rb") as f:
        digest = hashlib.sha256(f.read()).hexdigest()[:12]
    path = os.path.join(CACHE, "no_amx_{}.so".format(digest))
    if not os.path.exists(path):
        os.makedirs(CACHE, exist_ok=True)
        partial = path + ".{}.tmp".format(os.getpid())
        compiler = os.environ.get("CC", "cc")
        try:
            done = subprocess.run([compiler, "-shared", "-fPIC", "-O2", SOURCE, "-o", partial, "-ldl"],
                                  stdout=subprocess.PIPE, stderr=subprocess.STDOUT, universal_newlines=True)
        except OSError as e:
            raise SystemExit("without_amx: building {} needs a C compiler ({}: {}); set CC".format(
                SOURCE, compiler, e.strerror))
        if done.returncode != 0:
            raise SystemExit("without_amx: building {} failed:\n{}".format(SOURCE, done.stdout.strip()))
        os.replace(partial, path)
    return path


def environment(base=None):
    """`base` (default os.environ) with the shim first in LD_PRELOAD."""
    env = dict(os.environ if base is None else base)
    preload = [shim()] + ([env["LD_PRELOAD"]] if env.get("LD_PRELOAD") else [])
    env["LD_PRELOAD"] = " ".join(preload)
    return env


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help"):
        print(__doc__)
        return 0 if argv else 2
    try:
        os.execvpe(argv[0], argv, environment())
    except OSError as e:
        raise SystemExit("without_amx: cannot run {}: {}".format(argv[0], e.strerror))


if __name__ == "__main__":
    sys.exit(main())
