"""Reading HuggingFace GPT-2 checkpoints (KoGPT2 v2, `skt/kogpt2-base-v2`) into canonical params.

KoGPT2 v2 is the same network as v1 (pre-LN GPT-2, fused qkv laid out [q | k | v], tied LM
head), published in HuggingFace's layout: `config.json` plus `model.safetensors` and/or
`pytorch_model.bin`. Each HF key maps one to one onto a canonical (v1 structural) name; HF's
`Conv1D` stores weights as (in, out), the transpose of Gluon's Dense (out, in).

`model.safetensors` is read with the `safetensors` package's NumPy API, so serving needs no
PyTorch; `pytorch_model.bin` (a pickled state dict) needs torch and says so when it is missing.
Both imports are lazy: the base package must import on Python 3.6 without them.
"""

import numpy as np

from ..errors import HF_INSTALL_HINT, ModelLoadError, cause_of
from ..json_file import read_json_file
from ..model.weights import weights
from .checkpoint import expected_shapes
from .config import config_from_dict

SAFETENSORS, TORCH_BIN = "model.safetensors", "pytorch_model.bin"
WEIGHT_FILES = (SAFETENSORS, TORCH_BIN)  # in order of preference, as transformers does
LM_HEAD = "lm_head.weight"  # tied to the token embedding; stored by pytorch_model.bin only

# Causal-mask buffers that older transformers versions saved with the weights: not parameters.
_BUFFER_SUFFIXES = (".attn.bias", ".attn.masked_bias")

# config.json flags whose non-default value changes the network; we implement only the default.
_UNSUPPORTED_FLAGS = {"scale_attn_weights": True, "scale_attn_by_inverse_layer_idx": False,
                      "add_cross_attention": False}


def name_map(n_layer):
    """[(canonical, HF name without prefix, is_conv1d)] for every parameter of the model."""
    return [(w.canonical, w.hf, w.conv1d) for w in weights(n_layer)]


def read_hf_config(path):
    """config.json of a HF GPT-2 model -> GPT2Config; rejects options our network does not have."""
    raw = read_json_file(path, "model config")
    if isinstance(raw, dict):
        _check_hf_options(raw, path)
    return config_from_dict(raw, path)


def _check_hf_options(raw, path):
    model_type = raw.get("model_type", "gpt2")
    if model_type != "gpt2":
        raise ModelLoadError("{}: model_type is {!r}; only GPT-2 models (model_type \"gpt2\") can be served"
                             .format(path, model_type))
    for key, default in sorted(_UNSUPPORTED_FLAGS.items()):
        if key in raw and raw[key] != default:
            raise ModelLoadError("{}: {} = {!r} is not supported (KoGPT2's network has {} = {!r})".format(
                path, key, raw[key], key, default))


def read_hf_params(path, config):
    """HF weights file -> canonical {name: NDArray} (float32), checked against `config`.

    Every expected HF key must be present with its HF shape; anything else except old
    causal-mask buffers is an error, as is an LM head that is not the token embedding."""
    import mxnet as mx

    raw = read_hf_arrays(path)
    prefix = _prefix(raw, path)
    shapes = expected_shapes(config)  # canonical (Dense) shapes
    params = {}
    for canonical, hf, conv1d in name_map(config.n_layer):
        shape = shapes[canonical][::-1] if conv1d else shapes[canonical]  # Conv1D is (in, out)
        value = _take(raw, prefix + hf, shape, path)
        if conv1d:
            value = np.ascontiguousarray(value.T)  # Conv1D (in, out) -> Dense (out, in)
        params[canonical] = mx.nd.array(value, dtype="float32")
    _check_lm_head(raw, params["_embed.weight"], path)
    leftover = sorted(k for k in raw if not k.endswith(_BUFFER_SUFFIXES))
    if leftover:
        raise ModelLoadError("checkpoint {}: unexpected parameters {} (not part of a GPT-2 LM)".format(
            path, ", ".join(leftover[:5])))
    return params


def _prefix(raw, path):
    """'transformer.' for GPT2LMHeadModel checkpoints, '' for bare GPT2Model ones."""
    for prefix in ("transformer.", ""):
        if prefix + "wte.weight" in raw:
            return prefix
    raise ModelLoadError("checkpoint {}: not a GPT-2 checkpoint: no transformer.wte.weight among keys such as {}"
                         .format(path, ", ".join(sorted(raw)[:5])))


def _take(raw, key, shape, path):
    if key not in raw:
        raise ModelLoadError("checkpoint {}: missing parameter {} (expected shape {} from config.json)".format(
            path, key, shape))
    value = raw.pop(key)
    if tuple(value.shape) != tuple(shape):
        raise ModelLoadError("checkpoint {}: parameter {} has shape {}, expected {} from config.json".format(
            path, key, tuple(value.shape), tuple(shape)))
    return value


def _check_lm_head(raw, embed, path):
    head = raw.pop(LM_HEAD, None)
    if head is None:
        return
    if tuple(head.shape) != embed.shape or not np.array_equal(head, embed.asnumpy()):
        raise ModelLoadError("checkpoint {}: {} differs from transformer.wte.weight, but this server only runs "
                             "GPT-2 with the LM head tied to the token embedding".format(path, LM_HEAD))


def read_hf_arrays(path):
    """The raw {key: float32 ndarray} of model.safetensors or pytorch_model.bin."""
    if path.endswith(".safetensors"):
        return _read_safetensors(path)
    return _read_torch_bin(path)


def _read_safetensors(path):
    try:
        from safetensors import safe_open
    except ImportError:
        raise ModelLoadError("reading {} needs the safetensors package: {}".format(path, HF_INSTALL_HINT))
    arrays = {}
    try:
        with safe_open(path, framework="np") as f:
            for key in f.keys():
                arrays[key] = _as_float32(f.get_tensor(key), key, path)
    except ModelLoadError:
        raise
    except Exception as e:  # SafetensorError, OSError, or a dtype NumPy lacks (bfloat16)
        hint = "; NumPy has no bfloat16: save the weights as float32 or float16" if "bfloat16" in str(e) else ""
        raise ModelLoadError("cannot read {}: {}{}".format(path, cause_of(e), hint))
    return arrays


def _read_torch_bin(path):
    try:
        import torch
    except ImportError:
        raise ModelLoadError("{} is a PyTorch pickle and reading it needs torch, which is not installed. Install "
                             "torch (CPU build) or convert the file to model.safetensors on a machine that has it"
                             .format(path))
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # UnpicklingError, RuntimeError, OSError: not a plain state dict
        raise ModelLoadError("cannot read {} as a PyTorch state dict: {}".format(path, cause_of(e)))
    if not isinstance(state, dict) or not state:
        raise ModelLoadError("{} holds no state dict of named tensors".format(path))
    arrays = {}
    for key, t in state.items():
        if not isinstance(t, torch.Tensor):
            raise ModelLoadError("{}: entry {!r} is a {}, not a tensor".format(path, key, type(t).__name__))
        t = t.detach().to(torch.float32) if t.is_floating_point() else t.detach()  # bfloat16 has no NumPy twin
        arrays[key] = _as_float32(t.numpy(), key, path)
    return arrays


def _as_float32(array, key, path):
    if array.dtype.name == "bfloat16":  # NumPy with ml_dtypes: widen the bits exactly
        return (array.view(np.uint16).astype(np.uint32) << 16).view(np.float32)
    if array.dtype.kind != "f":
        if key.endswith(_BUFFER_SUFFIXES):
            return array  # old boolean/uint8 mask buffers: dropped later
        raise ModelLoadError("checkpoint {}: parameter {} has dtype {}, expected floating point".format(
            path, key, array.dtype))
    return array.astype(np.float32, copy=False)
