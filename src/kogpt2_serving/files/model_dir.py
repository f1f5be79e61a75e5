"""What a model directory holds, and which format it is in (decided by the files present).

- "kogpt2-v1": the walkthrough's model.tar.gz contents. Exactly one `*.params` (MXNet
  NDArray dict) and exactly one `*.spiece` (SentencePiece model), optionally `config.json`
  (HuggingFace GPT-2 keys). A converted v2 model (`kogpt2-serving convert`) has the same
  layout with `tokenizer.json` (plus transformers' `tokenizer_config.json` /
  `special_tokens_map.json` when the source had them) in place of the `*.spiece`; it must
  carry its `config.json` (v2 uses the tanh GELU, which the weights cannot tell).
- "hf-gpt2": KoGPT2 v2 as published (`skt/kogpt2-base-v2`) or any HF GPT-2 LM:
  `config.json`, `model.safetensors` and/or `pytorch_model.bin` (safetensors is preferred, as
  transformers does), `tokenizer.json`.

Anything else (e.g. `code/`, README, licence) is ignored. A directory mixing the two formats'
weights or tokenizers, or matching neither, is an error that lists what was found.
"""
import os
from typing import NamedTuple, Optional, Tuple

from ..errors import ModelLoadError

KOGPT2_V1, HF_GPT2 = "kogpt2-v1", "hf-gpt2"
HF_WEIGHTS = ("model.safetensors", "pytorch_model.bin")  # in order of preference
TOKENIZER_JSON = "tokenizer.json"
TOKENIZER_EXTRAS = ("tokenizer_config.json", "special_tokens_map.json")  # roles of special tokens
SHARD_INDEXES = ("model.safetensors.index.json", "pytorch_model.bin.index.json")
HF_LAYOUT = "model.safetensors or pytorch_model.bin, with tokenizer.json and config.json"


class ModelFiles(NamedTuple):
    directory: str
    params: str  # the weights: *.params (kogpt2-v1) or model.safetensors / pytorch_model.bin (hf-gpt2)
    spiece: Optional[str]  # *.spiece; None when the tokenizer is tokenizer.json
    config: Optional[str]  # config.json
    format: str = KOGPT2_V1
    tokenizer_json: Optional[str] = None
    tokenizer_extras: Tuple[str, ...] = ()  # tokenizer_config.json, special_tokens_map.json present

    @property
    def tokenizer(self):
        """The tokenizer file: *.spiece or tokenizer.json."""
        return self.spiece or self.tokenizer_json

    def paths(self):
        """Every file the model is made of (what packaging must ship)."""
        found = [self.params, self.tokenizer, self.config] + list(self.tokenizer_extras)
        return [p for p in found if p]


def find_model_files(directory):
    if not os.path.isdir(directory):
        raise ModelLoadError("model directory {} does not exist or is not a directory".format(directory))
    names = sorted(os.listdir(directory))
    hf_weights = [n for n in HF_WEIGHTS if n in names]
    v1_files = [n for n in names if n.endswith((".params", ".spiece"))]
    shards = [n for n in SHARD_INDEXES if n in names]
    if shards:
        raise ModelLoadError("model directory {} holds a sharded checkpoint ({}), which is not supported; save it "
                             "as one file. Found: {}".format(directory, shards[0], _listing(names)))
    if hf_weights and v1_files:
        raise ModelLoadError("model directory {} mixes KoGPT2 v1 files ({}) with HuggingFace weights ({}); keep one "
                             "format per directory. Found: {}".format(
                                 directory, ", ".join(v1_files), ", ".join(hf_weights), _listing(names)))
    if hf_weights:
        return _hf_files(directory, names, hf_weights[0])
    return _v1_files(directory, names)


def _v1_files(directory, names):
    params = [n for n in names if n.endswith(".params")]
    spiece = [n for n in names if n.endswith(".spiece")]
    has_json = TOKENIZER_JSON in names
    if has_json and spiece:
        raise ModelLoadError("model directory {} has two tokenizers, {} and {}; keep one. Found: {}".format(
            directory, spiece[0], TOKENIZER_JSON, _listing(names)))
    checks = (("*.params", params),) if has_json else (("*.params", params), ("*.spiece", spiece))
    unrecognised = not (params or spiece)  # no v1 file at all: say what a v2 directory needs too
    hint = " (nor is it a HuggingFace GPT-2 model: {})".format(HF_LAYOUT) if unrecognised else ""
    for kind, found in checks:
        if len(found) != 1:
            raise ModelLoadError("model directory {} must hold exactly one {} file, found {}: {}{}".format(
                directory, kind, len(found) or "none", _listing(names), hint))
    config = _optional(directory, names, "config.json")
    if has_json and not config:
        raise ModelLoadError("model directory {} holds {} with {} (a converted KoGPT2 v2 model) but no config.json, "
                             "which such a model needs (activation, special token ids); found: {}".format(
                                 directory, params[0], TOKENIZER_JSON, _listing(names)))
    return ModelFiles(directory, os.path.join(directory, params[0]),
                      None if has_json else os.path.join(directory, spiece[0]), config, KOGPT2_V1,
                      _optional(directory, names, TOKENIZER_JSON) if has_json else None,
                      _extras(directory, names) if has_json else ())


def _hf_files(directory, names, weights):
    missing = [n for n in (TOKENIZER_JSON, "config.json") if n not in names]
    if missing:
        raise ModelLoadError("model directory {} has {} but no {}: a HuggingFace GPT-2 model needs {}; found: {}".format(
            directory, weights, " or ".join(missing), HF_LAYOUT, _listing(names)))
    return ModelFiles(directory, os.path.join(directory, weights), None, os.path.join(directory, "config.json"),
                      HF_GPT2, os.path.join(directory, TOKENIZER_JSON), _extras(directory, names))


def _extras(directory, names):
    return tuple(os.path.join(directory, n) for n in TOKENIZER_EXTRAS if n in names)


def _optional(directory, names, name):
    path = os.path.join(directory, name)
    return path if name in names and os.path.isfile(path) else None


def _listing(names):
    return ", ".join(names) if names else "(empty)"
