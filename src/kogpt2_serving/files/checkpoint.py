"""Reading and writing KoGPT2 `.params` files in every key layout the original release used.

Which layout the real file has is not known, so all three are accepted:

1. structural (GluonNLP's `save_parameters`): `_embed.weight`, `_self_attention_layers.0._out_proj.bias`, ...
   with the tied LM head stored a second time as `_logits_proj.weight`;
2. structural, de-duplicated: the same without one of the two tied copies;
3. legacy prefix names (`collect_params().save`): `embed_weight`, `self_attn0_qkv_proj_weight`,
   `ffn0_dense0_weight`, `final_ln11_gamma`, ... with or without a block prefix (`gpt2model0_`).

Everything is normalized to the structural names ("canonical"), the names
:meth:`kogpt2_serving.model.network.GPT2Model.named_weights` gives the network's parameters
(model/weights.py maps them to the network's own).
"""
import hashlib
import re

import numpy as np

from ..errors import ModelLoadError, cause_of
from ..model.compat import load_parameter
from ..model.weights import GLOBAL, PER_LAYER, TIED, shape_of, weights
from .config import HEAD_SIZE, GPT2Config

LAYOUTS = ("structural", "deduplicated", "legacy")

# (legacy template, canonical template): {i} layer index, {p} parameter kind, {last} last layer.
_NAMES = [(w.legacy, w.canonical) for w in GLOBAL + PER_LAYER]  # (legacy, canonical) templates
_FIELDS = {"i": r"(?P<i>\d+)", "last": r"(?P<last>\d+)"}


def _template_regex(template):
    parts = re.split(r"\{(\w+)\}", template)  # literal, field, literal, ...
    return re.compile("".join(_FIELDS[s] if n % 2 else re.escape(s) for n, s in enumerate(parts)) + "$")


_TO_CANONICAL = [(_template_regex(legacy), canonical) for legacy, canonical in _NAMES]
_TO_LEGACY = [(_template_regex(canonical), legacy) for legacy, canonical in _NAMES]


def _rename(name, table, **extra):
    for regex, template in table:
        m = regex.match(name)
        if m:
            fields = dict(extra, **m.groupdict())
            return template.format(**fields)
    return None


def read_params(path):
    """The raw {key: NDArray} dict of a `.params` file."""
    import mxnet as mx

    try:
        raw = mx.nd.load(path)
    except Exception as e:  # MXNetError, OSError: the file is not an NDArray dict
        raise ModelLoadError("cannot read checkpoint {}: {}".format(path, cause_of(e)))
    if not isinstance(raw, dict) or not raw:
        raise ModelLoadError("checkpoint {} holds no named parameters".format(path))
    # Module-style checkpoints prefix names with arg:/aux:.
    return {re.sub(r"^(arg|aux):", "", k): v for k, v in raw.items()}


def canonicalize(raw, path):
    """Map any supported layout to canonical names, with the tied weight stored once."""
    if any(k.startswith(("_embed.", "_self_attention_layers.")) for k in raw):
        params = dict(raw)
    else:
        params = _from_legacy(raw, path)
    if all(k in params for k in TIED):
        a, b = (params[k].asnumpy() for k in TIED)
        if a.shape != b.shape or not np.array_equal(a, b):
            raise ModelLoadError("checkpoint {}: {} and {} differ, but KoGPT2's LM head is tied to the "
                                 "token embedding".format(path, *TIED))
    if TIED[0] not in params and TIED[1] in params:
        params[TIED[0]] = params[TIED[1]]
    params.pop(TIED[1], None)
    return params


def _from_legacy(raw, path):
    prefix = _legacy_prefix(raw, path)
    params = {}
    for key, value in raw.items():
        if not key.startswith(prefix):
            raise ModelLoadError("checkpoint {}: key {!r} lacks the block prefix {!r} the other keys have"
                                 .format(path, key, prefix))
        name = _rename(key[len(prefix):], _TO_CANONICAL)
        if name is None:
            raise ModelLoadError("checkpoint {}: unexpected parameter {!r}".format(path, key))
        if name in params:
            raise ModelLoadError("checkpoint {}: more than one key maps to {} (e.g. {!r})".format(path, name, key))
        params[name] = value
    return params


def _legacy_prefix(raw, path):
    embeds = [k for k in raw if k.endswith("embed_weight") and not k.endswith("pos_embed_weight")]
    if len(embeds) != 1:
        raise ModelLoadError("checkpoint {}: not a KoGPT2 parameter file (found {} token embeddings among "
                             "keys such as {})".format(path, len(embeds), ", ".join(sorted(raw)[:5])))
    return embeds[0][: -len("embed_weight")]


def infer_config(params, path):
    """Hyperparameters implied by the shapes (head size 64): KoGPT2 v1's values for the real file."""
    try:
        vocab, units = params["_embed.weight"].shape
        positions = params["_pos_embed.weight"].shape[0]
        hidden = params["_ffn_layers.0._hidden_map.weight"].shape[0]
    except KeyError as e:
        raise ModelLoadError("checkpoint {}: missing parameter {}".format(path, e))
    layers = len([k for k in params if re.match(r"_attn_ln\.\d+\.gamma$", k)])
    if units % HEAD_SIZE:
        raise ModelLoadError("checkpoint {}: embedding width {} is not a multiple of the head size {}; "
                             "add a config.json with n_head".format(path, units, HEAD_SIZE))
    return GPT2Config(vocab_size=vocab, n_positions=positions, n_embd=units, n_layer=layers,
                      n_head=units // HEAD_SIZE, n_inner=hidden if hidden != 4 * units else None)


def expected_shapes(config):
    """Canonical name -> shape, for every parameter of a model with this config."""
    return {w.canonical: shape_of(w, config) for w in weights(config.n_layer)}


def check_params(params, config, path):
    """Every expected key present with its shape, nothing unexpected."""
    expected = expected_shapes(config)
    for name, shape in sorted(expected.items()):
        if name not in params:
            raise ModelLoadError("checkpoint {}: missing parameter {} (expected shape {})".format(path, name, shape))
        actual = tuple(params[name].shape)
        if actual != shape:
            raise ModelLoadError("checkpoint {}: parameter {} has shape {}, expected {} from the model config"
                                 .format(path, name, actual, shape))
    extra = sorted(set(params) - set(expected))
    if extra:
        raise ModelLoadError("checkpoint {}: unexpected parameters {}".format(path, ", ".join(extra[:5])))


def load_into(model, params, ctx, dtype):
    """Copy checked canonical params into a model's parameters, casting to dtype on ctx."""
    if dtype != "float32":
        model.cast(dtype)
    own = model.named_weights()
    for name, value in params.items():
        load_parameter(own[name], value.astype(dtype, copy=False), ctx)


def save_params(model_or_params, path, layout="structural", prefix="gpt2model0_", float16=False):
    """Write canonical params to `path` in one of LAYOUTS (legacy: with `prefix`, may be '')."""
    import mxnet as mx

    params = _canonical_arrays(model_or_params)
    if layout == "structural":
        params[TIED[1]] = params[TIED[0]]
    elif layout == "legacy":
        last = len([k for k in params if re.match(r"_attn_ln\.\d+\.gamma$", k)]) - 1
        params = {prefix + _rename(k, _TO_LEGACY, last=last): v for k, v in params.items()}
    elif layout != "deduplicated":
        raise ValueError("layout must be one of {}, got {!r}".format(LAYOUTS, layout))
    if float16:
        params = {k: v.astype("float16") for k, v in params.items()}
    mx.nd.save(path, params)


def _canonical_arrays(model_or_params):
    if isinstance(model_or_params, dict):
        params = dict(model_or_params)
    else:
        params = {k: p.data() for k, p in model_or_params.named_weights().items()}
    params.pop(TIED[1], None)
    return params


def md5_name(path, template):
    """template.format(the first 10 hex digits of the file's MD5): how the original release
    named its files (``mxnet_kogpt2_9250bedc00.params``; its downloader checked the digits)."""
    md5 = hashlib.md5()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            md5.update(block)
    return template.format(md5.hexdigest()[:10])
