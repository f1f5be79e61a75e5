"""int8 weights: every matrix product's weight quantized at load time, held once.

Decode reads every weight once per token (497.5 MB in float32 at KoGPT2 size), so a CPU step
is bound by the bytes read; int8 reads a quarter of them. Each output row of a weight (N, K)
gets one float32 scale, max|row| / 127, and the row is rounded to the nearest multiple of it
in [-127, 127] (symmetric: no zero point, so the kernel needs no correction term). The tied
token table is quantized once, per row: its rows are the LM head's outputs and the lookup's
rows alike. The position table, LayerNorm parameters and biases stay float32, as do
activations between products and the cache. Inside a product (kernels/linear.cc), each input
row is quantized to 8 bits with its own scale and the sums are exact integers (vpdpbusd, AMX
tiles, vpmaddwd or plain C): a row's result never depends on the rows batched with it, nor on
the CPU it runs on.

Quantizing replaces each float32 weight by its int8 one in place, one matrix at a time, so the
model never holds a whole second copy; the step kernels (`fill_step_weights`) are skipped. On
AMX CPUs a weight whose shape allows it is then re-laid in the packed layout (kernels.pack_int8:
blocks of 16 outputs x 64 inputs, the operand AMX's tiles read as stored), same bytes, still held
once.
Accuracy against float32 is measured in benchmarks/int8_accuracy.py.
"""
from .compat import load_parameter
from .network import Linear, Lookup, blocks

LEVELS = 127  # symmetric range [-127, 127]; -128 unused, so negation is exact
INT8 = "int8"


def store_weights_in_int8(model):
    """Quantize every Linear's weight (and the tied table once) to int8, in place, before the
    first forward pass builds a graph. Loads the kernels first: their absence is a
    ModelLoadError (kernels.problem() says why) before any weight changed."""
    from .. import kernels

    kernels.load()
    linears = blocks(model, Linear)
    tied = {id(linear.weight) for linear in linears}
    packed = {}  # id(weight) -> held packed, for the weights quantized here
    for block in linears + [b for b in blocks(model, Lookup) if id(b.weight) in tied]:
        block.int8 = True
        weight = block.weight
        if weight.dtype != INT8:
            _quantize(weight, block.weight_scale)
            packed[id(weight)] = kernels.packs_int8() and kernels.can_pack(weight.shape)
            if packed[id(weight)]:
                _pack(weight)
        # the tied table is quantized (and packed) once: the lookup reads it as the head holds it
        block.int8_packed = packed.get(id(weight), block.int8_packed)


def quantized(weight):
    """weight (N, K) float32 NDArray -> (int8 (N, K), scale (N,) float32), per output row."""
    from mxnet import nd

    absmax = nd.max(nd.abs(weight), axis=1)  # (N,)
    # An all-zero row keeps scale 1: its int8 row is all zeros either way.
    scale = nd.where(absmax > 0, absmax / LEVELS, nd.ones_like(absmax))  # (N,)
    values = nd.clip(nd.round(nd.broadcast_div(weight, scale.expand_dims(1))), -LEVELS, LEVELS)  # (N, K)
    return values.astype(INT8), scale


def _pack(param):
    """The int8 weight re-laid in the packed layout (kernels.pack_int8), in place, same bytes."""
    from mxnet import nd

    from .. import kernels

    param.set_data(nd.array(kernels.pack_int8(param.data().asnumpy()), ctx=param.list_ctx()[0], dtype=INT8))


def _quantize(param, scale_param):
    values, scale = quantized(param.data())
    ctx = param.list_ctx()[0]
    param.cast(INT8)  # drops the float32 array
    param.set_data(values)
    load_parameter(scale_param, scale, ctx)
