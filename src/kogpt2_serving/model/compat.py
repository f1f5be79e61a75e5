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
  block's first call, and which of its inputs are the call's arguments and which parameters;
  and ``MXInvokeCachedOpEx`` through ``mx.base._LIB``, the C call that runs it (`GraphCall`).
- ``HybridBlock._cached_graph`` and ``_flags``: the symbol that graph was built from and the
  hybridize flags, for a second CachedOp over the same symbol whose `param_indices` name every
  input (`BoundGraph`).
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
    `block(*args)` but straight to the graph Gluon built on the first call, through MXNet's C
    API (`MXInvokeCachedOpEx`, which Gluon's own call ends in). Gluon's call fetches every
    parameter's array again and builds the C array of every input's handle on each call (~150
    parameters at KoGPT2 size: ~0.4 ms, a tenth of an int8 decode step), though a decoding
    model's parameters never change once it is built: here the parameters' handles are set once
    and each call only sets its arguments'. Returns the outputs as a tuple (one NDArray alone)."""

    def __init__(self, block):
        self.block = block
        self._graph = None

    @property
    def built(self):
        return self._graph is not None and self.block._cached_op is self._graph

    def __call__(self, *args):
        if not self.built:
            out = self.block(*args)  # builds the graph (Gluon's path, with its checks)
            self._prepare()
            return out
        for slot, index in self._arguments:
            self._handles[slot] = args[index].handle
        return self._invoke()

    def _prepare(self):
        from mxnet.base import NDArrayHandle

        self._graph = self.block._cached_op
        plan = self.block._cached_op_args  # per graph input: (True, argument index) or (False, Parameter)
        self._params = [None if is_arg else entry.data() for is_arg, entry in plan]  # kept alive
        self._handles = (NDArrayHandle * len(plan))(*[None if p is None else p.handle for p in self._params])
        self._arguments = [(slot, entry) for slot, (is_arg, entry) in enumerate(plan) if is_arg]

    def _invoke(self):
        return _invoke(self._graph, self._handles)

    def bind(self, *args):
        """This (built) graph with `args` bound to it as its parameters are: a BoundGraph."""
        return BoundGraph(self, args)


class BoundGraph:
    """A built GraphCall's graph with its arguments fixed, called without any: each call reads
    what the arguments' arrays hold by then (they are written in place between calls).

    Why: the graph MXNet runs treats the arguments of a call as new arrays every time. Each
    operator that reads one (at KoGPT2 size a decode step's 12 attention operators, which read
    the cache, the mask and the slot) then runs on its own, dispatched one by one from the
    calling thread, and splits the rest of the graph into separate engine operations (~26 a
    step). Bound as parameters are (CachedOp's `param_indices`: checked to be the same arrays on
    each call, not re-bound), everything up to the graph's outputs is one engine operation.
    Building one costs a few ms (a CachedOp over the same symbol, then its first call sets up
    every operator), so it pays for arguments that stay the same for many calls: a decode
    state's (model/engine.py, `Engine.step`).

    The bound operators that write into an argument (the attention operator writes the new
    token's key and value into the cache) are seen by MXNet's engine as reading it: whoever
    reads those arrays after a call must first wait for the call's outputs, which the engine
    does (every step's logits are copied to the host before anything else touches the state).
    The arrays stay referenced for as long as the BoundGraph lives."""

    def __init__(self, call, args):
        import mxnet as mx

        block = call.block
        inputs = len(call._handles)
        flags = [("data_indices", "()"), ("param_indices", str(tuple(range(inputs))))]
        flags += [(k, v) for k, v in block._flags if k not in ("data_indices", "param_indices")]
        self._graph = mx.nd.CachedOp(block._cached_graph[1], flags)
        self.args = args  # kept alive with the graph that references them
        self._handles = (type(call._handles))(*call._handles)
        for slot, index in call._arguments:
            self._handles[slot] = args[index].handle

    def __call__(self):
        return _invoke(self._graph, self._handles)


def _invoke(graph, handles):
    """Run a CachedOp over the C array of its inputs' handles -> its outputs (a tuple, or one NDArray)."""
    from mxnet.base import NDArrayHandle, check_call, _LIB
    from mxnet.ndarray import NDArray

    count, outputs = ctypes.c_int(0), ctypes.POINTER(NDArrayHandle)()
    stypes = ctypes.POINTER(ctypes.c_int)()
    check_call(_LIB.MXInvokeCachedOpEx(graph.handle, ctypes.c_int(len(handles)), handles, ctypes.byref(count),
                                       ctypes.byref(outputs), ctypes.byref(stypes)))
    out = tuple(NDArray(ctypes.cast(outputs[i], NDArrayHandle)) for i in range(count.value))
    return out if len(out) > 1 else out[0]


def slice_assign(target, value, begin, end):
    """target[begin:end] = value, one slice per axis (None: to the axis' end), as one operator."""
    from mxnet import nd

    nd._internal._slice_assign(target, value, begin=begin, end=end, out=target)


def slice_fill(target, scalar, begin, end):
    """target[begin:end] = scalar, as slice_assign."""
    from mxnet import nd

    nd._internal._slice_assign_scalar(target, scalar=scalar, begin=begin, end=end, out=target)
