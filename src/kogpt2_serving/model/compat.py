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
