"""The MXNet internals this package relies on, in one place.

Each is a private API that both MXNet versions the project runs (1.6.0 in the images, 1.9.1
in development; the test matrix runs both) have and that has no public equivalent:

- ``Parameter._load_init(data, ctx)``: give a parameter its value without first allocating
  and initialising it (``set_data`` needs an initialised parameter; ``initialize`` would fill
  a 500 MB model with random numbers only to overwrite them). It copies ``data``.
- ``Block._collect_params_with_prefix()``: parameters by *structural* name
  (``layers.0.attention._out_proj.weight``), the names ``save_parameters`` writes; the
  public ``collect_params()`` keys them by the prefix names of the block tree instead.
- ``MXSetNumOMPThreads`` through ``mx.base._LIB``: resize the OpenMP pool after MXNet was
  imported (the pool is sized from OMP_NUM_THREADS at import time).
- ``HybridBlock._cached_op`` and ``_cached_op_args``: the graph Gluon built on a hybridized
  block's first call, and which of its inputs are the call's arguments and which parameters
  (`GraphCall`).
- ``mx.nd._internal._slice_assign`` / ``_slice_assign_scalar``: the operators behind
  ``NDArray.__setitem__`` with slices, without its indexing work in Python (~60 us a call).
"""
import ctypes


def load_parameter(param, data, ctx):
    """Set `param` to (a copy of) NDArray/NumPy `data` on `ctx`, uninitialised or not."""
    param._load_init(data, ctx)


def structural_parameters(block):
    """{structural name: Parameter} of a block tree, as save_parameters names them."""
    return block._collect_params_with_prefix()


def set_omp_threads(threads):
    import mxnet as mx

    mx.base._LIB.MXSetNumOMPThreads(ctypes.c_int(threads))


class GraphCall:
    """Calls a hybridized block's graph with flat NDArray arguments (no None, no nesting), like
    `block(*args)` but straight to the graph Gluon built on the first call: Gluon's own call
    fetches every parameter's array again on each call (~150 at KoGPT2 size: ~0.5 ms, a tenth of
    an int8 decode step), though a decoding model's parameters never change once it is built.
    Returns the graph's outputs as a tuple (one NDArray alone when there is one)."""

    def __init__(self, block):
        self.block = block
        self._graph = None
        self._plan = None  # per graph input: (True, argument index) or (False, parameter array)

    def __call__(self, *args):
        if self._graph is None or self.block._cached_op is not self._graph:
            out = self.block(*args)  # builds the graph (Gluon's path, with its checks)
            self._graph = self.block._cached_op
            self._plan = [(True, i) if is_arg else (False, i.data()) for is_arg, i in self.block._cached_op_args]
            return out
        out = self._graph(*[args[entry] if is_arg else entry for is_arg, entry in self._plan])
        if isinstance(out, (list, tuple)):
            return tuple(out) if len(out) > 1 else out[0]
        return out


def slice_assign(target, value, begin, end):
    """target[begin:end] = value, one slice per axis (None: to the axis' end), as one operator."""
    from mxnet import nd

    nd._internal._slice_assign(target, value, begin=begin, end=end, out=target)


def slice_fill(target, scalar, begin, end):
    """target[begin:end] = scalar, as slice_assign."""
    from mxnet import nd

    nd._internal._slice_assign_scalar(target, scalar=scalar, begin=begin, end=end, out=target)
