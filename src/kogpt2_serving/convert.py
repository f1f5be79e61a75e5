"""Write any model directory in the v1 layout (`kogpt2-serving convert --from DIR --to DIR`).

The output is what the rest of the tooling already handles: one `*.params` in the structural
key layout (MD5-suffixed, as the original release named its files), the tokenizer, and a
`config.json` stating every hyperparameter. For a KoGPT2 v2 / HF GPT-2 source the tokenizer
stays `tokenizer.json` (v2's tokenizer is not SentencePiece), with transformers'
`tokenizer_config.json` / `special_tokens_map.json` when present, so a converted v2 directory
is `*.params + tokenizer.json + config.json`. The source's config.json is carried over
(special token ids, licence and author fields) with the hyperparameters restated, so the
converted model behaves exactly as the source: same weights, activation, tokenizer and prompts.
"""
import hashlib
import json
import os
import shutil

from . import checkpoint
from .device import ensure_threads_configured
from .errors import ModelLoadError
from .loader import check_vocab, load_tokenizer, read_weights
from .model_dir import find_model_files

PARAMS_TEMPLATE = "mxnet_kogpt2_{}.params"  # first 10 hex digits of the file's MD5
NOTICE_PREFIXES = ("license", "licence", "readme", "notice")  # travel with the weights


def convert(source, dest):
    """Convert the model in `source` (either format) into the new directory `dest`; returns
    dest's ModelFiles. Everything is checked as for serving before anything is written."""
    ensure_threads_configured()  # before the weights become NDArrays (see device.py)
    files = find_model_files(source)
    _check_destination(dest)  # a non-empty dest, the source included, is refused
    tokenizer = load_tokenizer(files)
    params, config = read_weights(files)
    checkpoint.check_params(params, config, files.params)
    check_vocab(config, tokenizer, files)
    os.makedirs(dest, exist_ok=True)
    _write_params(params, dest)
    for path in [files.tokenizer] + list(files.tokenizer_extras) + _notices(source):
        shutil.copyfile(path, os.path.join(dest, os.path.basename(path)))
    _write_config(config, files.config, os.path.join(dest, "config.json"))
    return find_model_files(dest)


def _check_destination(dest):
    if os.path.exists(dest) and not os.path.isdir(dest):
        raise ModelLoadError("output {} exists and is not a directory".format(dest))
    if os.path.isdir(dest) and os.listdir(dest):
        raise ModelLoadError("output directory {} is not empty ({}); convert into a new directory".format(
            dest, ", ".join(sorted(os.listdir(dest))[:5])))


def _write_params(params, dest):
    tmp = os.path.join(dest, ".params.tmp")
    checkpoint.save_params(params, tmp, layout="structural")
    md5 = hashlib.md5()
    with open(tmp, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            md5.update(block)
    path = os.path.join(dest, PARAMS_TEMPLATE.format(md5.hexdigest()[:10]))
    os.replace(tmp, path)
    return path


def _write_config(config, source_config, path):
    """The source's config.json (token ids, licence, ...) with our hyperparameters on top."""
    merged = {}
    if source_config:
        with open(source_config, encoding="utf-8") as f:
            merged = json.load(f)
    merged.update(config.to_json_dict())
    with open(path, "w", encoding="utf-8") as f:
        json.dump(merged, f, indent=2, sort_keys=True, ensure_ascii=False)
        f.write("\n")


def _notices(directory):
    return [os.path.join(directory, n) for n in sorted(os.listdir(directory))
            if n.lower().startswith(NOTICE_PREFIXES) and os.path.isfile(os.path.join(directory, n))]
