"""The one table of KoGPT2's weights: every parameter's canonical name (the structural name
GluonNLP's ``save_parameters`` writes from its network's attributes, which every v1 ``.params``
file uses), its name inside this package's network (``GPT2Model``'s structural name), its name in
the legacy ``collect_params().save`` layout, its name in a HuggingFace GPT-2 checkpoint, and its
shape.

``{i}`` is the layer; ``{last}`` the index of the last layer (the legacy final LayerNorm's
prefix carries it: ``final_ln11_``); a HuggingFace Conv1D weight is stored transposed, (in,
out). Readers and writers of every format, the shape check, the network's ``named_weights`` and
the test models use this table.
"""
from typing import NamedTuple, Tuple


class Weight(NamedTuple):
    canonical: str  # GluonNLP's: four parallel lists of layers (_self_attention_layers.0, _attn_ln.0, ...)
    network: str  # GPT2Model's structural name: one list of DecoderLayers (layers.0.attention, ...)
    legacy: str
    hf: str  # without the "transformer." prefix
    conv1d: bool  # HF stores it (in, out)
    shape: str  # in config terms: V vocab, P positions, U units, F feed-forward hidden


GLOBAL = (
    Weight("_embed.weight", "_embed.weight", "embed_weight", "wte.weight", False, "V,U"),
    Weight("_pos_embed.weight", "_pos_embed.weight", "pos_embed_weight", "wpe.weight", False, "P,U"),
    Weight("_final_ln.gamma", "_final_ln.gamma", "final_ln{last}_gamma", "ln_f.weight", False, "U"),
    Weight("_final_ln.beta", "_final_ln.beta", "final_ln{last}_beta", "ln_f.bias", False, "U"),
)
PER_LAYER = (
    Weight("_attn_ln.{i}.gamma", "layers.{i}.attn_ln.gamma", "attn_ln{i}_gamma", "h.{i}.ln_1.weight", False, "U"),
    Weight("_attn_ln.{i}.beta", "layers.{i}.attn_ln.beta", "attn_ln{i}_beta", "h.{i}.ln_1.bias", False, "U"),
    Weight("_self_attention_layers.{i}._multi_head_qkv_proj.weight", "layers.{i}.attention._multi_head_qkv_proj.weight",
           "self_attn{i}_qkv_proj_weight", "h.{i}.attn.c_attn.weight", True, "3U,U"),
    Weight("_self_attention_layers.{i}._multi_head_qkv_proj.bias", "layers.{i}.attention._multi_head_qkv_proj.bias",
           "self_attn{i}_qkv_proj_bias", "h.{i}.attn.c_attn.bias", False, "3U"),
    Weight("_self_attention_layers.{i}._out_proj.weight", "layers.{i}.attention._out_proj.weight",
           "self_attn{i}_out_proj_weight", "h.{i}.attn.c_proj.weight", True, "U,U"),
    Weight("_self_attention_layers.{i}._out_proj.bias", "layers.{i}.attention._out_proj.bias",
           "self_attn{i}_out_proj_bias", "h.{i}.attn.c_proj.bias", False, "U"),
    Weight("_ffn_ln.{i}.gamma", "layers.{i}.ffn_ln.gamma", "ffn_ln{i}_gamma", "h.{i}.ln_2.weight", False, "U"),
    Weight("_ffn_ln.{i}.beta", "layers.{i}.ffn_ln.beta", "ffn_ln{i}_beta", "h.{i}.ln_2.bias", False, "U"),
    Weight("_ffn_layers.{i}._hidden_map.weight", "layers.{i}.ffn._hidden_map.weight", "ffn{i}_dense0_weight",
           "h.{i}.mlp.c_fc.weight", True, "F,U"),
    Weight("_ffn_layers.{i}._hidden_map.bias", "layers.{i}.ffn._hidden_map.bias", "ffn{i}_dense0_bias",
           "h.{i}.mlp.c_fc.bias", False, "F"),
    Weight("_ffn_layers.{i}._out_map.weight", "layers.{i}.ffn._out_map.weight", "ffn{i}_dense1_weight",
           "h.{i}.mlp.c_proj.weight", True, "U,F"),
    Weight("_ffn_layers.{i}._out_map.bias", "layers.{i}.ffn._out_map.bias", "ffn{i}_dense1_bias",
           "h.{i}.mlp.c_proj.bias", False, "U"),
)
# The LM head is the token embedding's table (tied). GluonNLP's save_parameters writes it a second
# time under the head's name, which is also the head's name in GPT2Model; the table lists it once.
TIED = ("_embed.weight", "_logits_proj.weight")


# The checkpoint's attributes in the order GPT2Model registered them while it had GluonNLP's four
# lists of layers: the order `named_weights` lists the weights in, each attribute over the layers,
# and so the order a model's checkpoint is written in (files/checkpoint.py), which keeps the bytes
# of the shipped demo model reproducible. (Its initial weights were drawn in this order too.)
CHECKPOINT_ORDER = ("_embed", "_pos_embed", "_self_attention_layers", "_ffn_layers", "_attn_ln", "_ffn_ln",
                    "_final_ln")


def in_checkpoint_order(rows):
    """Weights sorted by CHECKPOINT_ORDER; the sort is stable, so layers stay in turn within each
    attribute, and a layer's weights in table order."""
    return sorted(rows, key=lambda w: CHECKPOINT_ORDER.index(w.canonical.split(".")[0]))


def weights(n_layer):
    """Every weight of an n_layer model, its names filled in ({last} stays a field)."""
    rows = list(GLOBAL)
    for i in range(n_layer):
        rows += [w._replace(canonical=w.canonical.format(i=i), network=w.network.format(i=i),
                            legacy=w.legacy.replace("{i}", str(i)), hf=w.hf.format(i=i)) for w in PER_LAYER]
    return rows


def shape_of(weight, config) -> Tuple[int, ...]:
    sizes = {"V": config.vocab_size, "P": config.n_positions, "U": config.n_embd, "F": config.ffn_size}
    return tuple(int(dim[:-1] or 1) * sizes[dim[-1]] for dim in weight.shape.split(","))
