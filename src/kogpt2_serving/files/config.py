"""Model hyperparameters, read from HuggingFace GPT-2 `config.json` keys or inferred from a checkpoint.

KoGPT2 v1 shipped no config file; its values are implied by the checkpoint's shapes (head size 64).
A `config.json` beside the weights, when present, is authoritative and checked against them.
"""
import json
from typing import NamedTuple, Optional

from ..errors import ModelLoadError
from ..json_file import read_json_file

ACTIVATIONS = {"gelu": "erf", "gelu_new": "tanh", "gelu_pytorch_tanh": "tanh"}
HEAD_SIZE = 64  # KoGPT2 v1 and GPT-2: units / heads


class GPT2Config(NamedTuple):
    vocab_size: int = 50000
    n_positions: int = 1024
    n_embd: int = 768
    n_layer: int = 12
    n_head: int = 12
    n_inner: Optional[int] = None  # None: 4 * n_embd, as in GPT-2
    layer_norm_epsilon: float = 1e-5
    activation_function: str = "gelu"  # "gelu" = exact erf GELU (KoGPT2 v1); "gelu_new" = tanh

    @property
    def head_size(self):
        return self.n_embd // self.n_head

    @property
    def ffn_size(self):
        return self.n_inner or 4 * self.n_embd

    @property
    def gelu(self):
        """'erf' or 'tanh'."""
        return ACTIVATIONS[self.activation_function]

    def to_json_dict(self):
        d = self._asdict()
        d["model_type"] = "gpt2"
        return d


_INT_KEYS = ("vocab_size", "n_positions", "n_embd", "n_layer", "n_head")


def config_from_dict(raw, source):
    """Build a config from HF GPT-2 keys; unknown keys are ignored (HF configs carry many)."""
    if not isinstance(raw, dict):
        raise ModelLoadError("{}: expected a JSON object, got {}".format(source, type(raw).__name__))
    values = {}
    for key in _INT_KEYS:
        if key in raw:
            values[key] = _positive_int(raw[key], key, source)
    if raw.get("n_inner") is not None:
        values["n_inner"] = _positive_int(raw["n_inner"], "n_inner", source)
    if "layer_norm_epsilon" in raw:
        eps = raw["layer_norm_epsilon"]
        if isinstance(eps, bool) or not isinstance(eps, (int, float)) or not 0 < eps < 1:
            raise ModelLoadError("{}: layer_norm_epsilon must be in (0, 1), got {!r}".format(source, eps))
        values["layer_norm_epsilon"] = float(eps)
    if "activation_function" in raw:
        act = raw["activation_function"]
        if act not in ACTIVATIONS:
            raise ModelLoadError("{}: activation_function must be one of {}, got {!r}".format(
                source, ", ".join(sorted(ACTIVATIONS)), act))
        values["activation_function"] = act
    config = GPT2Config(**values)
    if config.n_embd % config.n_head:
        raise ModelLoadError("{}: n_embd ({}) must be divisible by n_head ({})".format(
            source, config.n_embd, config.n_head))
    return config


def read_config_file(path):
    return config_from_dict(read_json_file(path, "model config"), path)


def write_config_file(config, path, base=None):
    """config.json with the hyperparameters in HF GPT-2 keys, on top of `base` (another
    config.json's fields: special token ids, licence, author) when given."""
    merged = dict(base or {})
    merged.update(config.to_json_dict())
    with open(path, "w", encoding="utf-8") as f:
        json.dump(merged, f, indent=2, sort_keys=True, ensure_ascii=False)
        f.write("\n")


def _positive_int(value, key, source):
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ModelLoadError("{}: {} must be a positive integer, got {!r}".format(source, key, value))
    return value
