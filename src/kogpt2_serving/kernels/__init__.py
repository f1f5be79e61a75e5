"""Kernels of our own for CPU decoding, as MXNet extension operators: matrix products
(linear.cc) and a decode step's attention (attention.cc).

Decode is bandwidth-bound: a step reads every weight once, and oneDNN's float32 GEMV reads them
well below memory speed on AVX2 CPUs (docs: ../shared/reference/cpu-performance.md, issue 17).
linear.cc holds products over int8 (weight-only, per-output-channel scales) and float32
weights, registered as the operators ``kogpt2_linear_int8`` and ``kogpt2_linear_f32``;
attention.cc holds ``kogpt2_attention_step`` (every row and head of one step, each row reading
only its own cache slots); packed.cc holds the int8 products and lookup over weights packed for
AMX (``pack_int8``). isa.h picks the instruction set for all of them.

They are compiled here, on first use, against the installed MXNet's ``lib_api`` (its extension
ABI changes between releases, so a prebuilt library would tie the package to one MXNet), into a
cache keyed by the MXNet version and the source's hash, then loaded with ``mx.library.load``.
MXNet 1.6 (the images' MXNet) has no extension API for operators: :func:`problem` says so, and
callers refuse the kernels with that message instead of failing mid-load.
"""
import ctypes
import hashlib
import os
import subprocess
import tempfile

from ..errors import ModelLoadError

HERE = os.path.dirname(os.path.abspath(__file__))
SOURCES = [os.path.join(HERE, name) for name in ("linear.cc", "attention.cc", "packed.cc")]
HEADERS = [os.path.join(HERE, name) for name in ("isa.h", "int8_rows.h", "op_common.h", "fast_math.h")]
CACHE_ENV = "KOGPT2_KERNEL_CACHE"
COMPILER_ENV = "CXX"
_loaded = []


def problem():
    """Why the kernels cannot run in this process ("" when they can), naming the missing piece."""
    import mxnet as mx

    version = tuple(int(p) for p in mx.__version__.split(".")[:2] if p.isdigit())
    if version < (1, 7):
        return "MXNet {} has no extension API for operators (MXNet 1.7 added it)".format(mx.__version__)
    if not os.path.exists(_lib_api_source()):
        return "this MXNet {} install has no {} to build extension operators with".format(
            mx.__version__, _lib_api_source())
    return ""


def load():
    """Build (once per MXNet version and source) and load the kernels -> the library's path."""
    if _loaded:
        return _loaded[0]
    why = problem()
    if why:
        raise ModelLoadError("the kogpt2 kernels cannot run here: {}".format(why))
    import mxnet as mx

    path = _built_library()
    mx.library.load(path, verbose=False)
    _loaded.append(path)
    return path


def isa():
    """The instruction set the kernels run with in this process: amx, avx512_vnni, avx512, avx2 or
    portable (capped by KOGPT2_KERNEL_ISA or DNNL_MAX_CPU_ISA, read once per process)."""
    lib = ctypes.CDLL(load())
    lib.kogpt2_kernel_isa.restype = ctypes.c_char_p
    return lib.kogpt2_kernel_isa().decode()


PACKED_OUTPUTS, PACKED_INPUTS = 16, 64  # a packed block: 16 outputs x 64 inputs (packed.cc)


def packs_int8():
    """Whether int8 weights are held packed (packed.cc's layout, read by kogpt2_linear_int8_packed
    and kogpt2_lookup_int8_packed) in this process: on AMX, whose tiles take the layout as it is
    (on AVX-512 VNNI alone it measured no faster than the row-major kernel)."""
    return isa() == "amx"


def can_pack(shape):
    """Whether a weight (M, K) fits the packed layout: M a multiple of 16, K of 64."""
    rows, cols = shape
    return rows > 0 and cols > 0 and rows % PACKED_OUTPUTS == 0 and cols % PACKED_INPUTS == 0


def pack_int8(values):
    """int8 weight (M, K) -> the same bytes in packed.cc's layout, shape (M, K) kept: blocks of 16
    outputs x 64 inputs, block (mb, kb) at (mb * K/64 + kb) * 1024, its byte r * 64 + n * 4 + j
    holding w[mb * 16 + n][kb * 64 + r * 4 + j]. A NumPy array in, a NumPy array out."""
    import numpy as np

    rows, cols = values.shape
    blocks = values.reshape(rows // PACKED_OUTPUTS, PACKED_OUTPUTS, cols // PACKED_INPUTS, PACKED_INPUTS // 4, 4)
    return np.ascontiguousarray(blocks.transpose(0, 2, 3, 1, 4)).reshape(rows, cols)  # (mb, kb, r, n, j)


def _lib_api_source():
    import mxnet as mx

    return os.path.join(os.path.dirname(mx.__file__), "src", "lib_api.cc")


def _built_library():
    import mxnet as mx

    digest = hashlib.sha256(mx.__version__.encode())
    for name in SOURCES + HEADERS:
        with open(name, "rb") as f:
            digest.update(f.read())
    digest = digest.hexdigest()[:16]
    folder = os.environ.get(CACHE_ENV) or os.path.join(os.path.expanduser("~"), ".cache", "kogpt2-serving")
    path = os.path.join(folder, "kogpt2_kernels_{}_{}.so".format(mx.__version__, digest))
    if not os.path.exists(path):
        os.makedirs(folder, exist_ok=True)
        _compile(path)
    return path


def _compile(path):
    """g++ into a temporary name, then rename: processes building at once never load half a file."""
    import mxnet as mx

    root = os.path.dirname(mx.__file__)
    fd, partial = tempfile.mkstemp(suffix=".so", dir=os.path.dirname(path))
    os.close(fd)
    command = [os.environ.get(COMPILER_ENV, "g++"), "-shared", "-fPIC", "-O3", "-std=c++14", "-fopenmp",
               "-I", os.path.join(root, "include"), "-I", HERE] + SOURCES + [_lib_api_source(), "-o", partial]
    try:
        done = subprocess.run(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, universal_newlines=True)
    except OSError as e:
        os.unlink(partial)
        raise ModelLoadError("building the kogpt2 kernels needs a C++ compiler ({}: {}); set {} to one".format(
            command[0], e.strerror, COMPILER_ENV))
    if done.returncode != 0:
        os.unlink(partial)
        tail = "\n".join(done.stdout.strip().splitlines()[-5:])
        raise ModelLoadError("building the kogpt2 kernels from {} failed:\n{}".format(", ".join(SOURCES), tail))
    os.replace(partial, path)
