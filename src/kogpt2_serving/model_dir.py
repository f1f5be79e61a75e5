"""What a model directory holds: the walkthrough's model.tar.gz contents.

Exactly one `*.params` (MXNet NDArray dict), exactly one `*.spiece` (SentencePiece model),
and optionally `config.json` (HuggingFace GPT-2 keys). Anything else (e.g. `code/`) is ignored.
"""
import os
from typing import NamedTuple, Optional

from .errors import ModelLoadError


class ModelFiles(NamedTuple):
    directory: str
    params: str
    spiece: str
    config: Optional[str]


def find_model_files(directory):
    if not os.path.isdir(directory):
        raise ModelLoadError("model directory {} does not exist or is not a directory".format(directory))
    names = sorted(os.listdir(directory))
    params = [n for n in names if n.endswith(".params")]
    spiece = [n for n in names if n.endswith(".spiece")]
    for kind, found in (("*.params", params), ("*.spiece", spiece)):
        if len(found) != 1:
            raise ModelLoadError("model directory {} must hold exactly one {} file, found {}: {}".format(
                directory, kind, len(found) or "none", _listing(names)))
    config = os.path.join(directory, "config.json")
    return ModelFiles(directory, os.path.join(directory, params[0]), os.path.join(directory, spiece[0]),
                      config if os.path.isfile(config) else None)


def _listing(names):
    return ", ".join(names) if names else "(empty)"
