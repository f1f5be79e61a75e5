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
import os
import shutil

from ..errors import ModelLoadError
from ..model.device import ensure_threads_configured
from . import checkpoint
from ..json_file import read_json_file
from .config import write_config_file
from .loader import read_checked
from .model_dir import find_model_files

PARAMS_TEMPLATE = "mxnet_kogpt2_{}.params"  # first 10 hex digits of the file's MD5
NOTICE_PREFIXES = ("license", "licence", "readme", "notice")  # travel with the weights


def convert(source, dest):
    """Convert the model in `source` (either format) into the new directory `dest`; returns
    dest's ModelFiles. Everything is checked as for serving before anything is written."""
    ensure_threads_configured()  # before the weights become NDArrays (see device.py)
    files = find_model_files(source)
    _check_destination(dest)  # a non-empty dest, the source included, is refused
    _, params, config = read_checked(files)
    os.makedirs(dest, exist_ok=True)
    _write_params(params, dest)
    for path in [files.tokenizer] + list(files.tokenizer_extras) + _notices(source):
        shutil.copyfile(path, os.path.join(dest, os.path.basename(path)))
    base = read_json_file(files.config, "config") if files.config else None  # token ids, licence, ...
    write_config_file(config, os.path.join(dest, "config.json"), base)
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
    path = os.path.join(dest, checkpoint.md5_name(tmp, PARAMS_TEMPLATE))
    os.replace(tmp, path)
    return path


def _notices(directory):
    return [os.path.join(directory, n) for n in sorted(os.listdir(directory))
            if n.lower().startswith(NOTICE_PREFIXES) and os.path.isfile(os.path.join(directory, n))]
