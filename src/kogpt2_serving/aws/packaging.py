"""Write model.tar.gz in the layout SageMaker's MXNet containers expect, after loading it once.

Layout (framework >= 1.4): the model files at the top level, plus `code/inference.py`, which
only points the SageMaker toolkit at this package's handler (the image has the package
installed, so no `code/requirements.txt` and no network at container start). Unpacking the
archive and calling `model_fn` on the result loads the same model.
"""
import io
import logging
import os
import tarfile
import time
from typing import List, NamedTuple

from ..errors import ServingError
from ..files.model_dir import find_model_files

log = logging.getLogger(__name__)

ENTRY_POINT = "code/inference.py"
INFERENCE_PY = '''"""SageMaker entry point, written by `kogpt2-serving package`.

The container has kogpt2-serving installed; this module only tells the SageMaker toolkit
where the handler functions are. Define one of them here to override it.
"""
from kogpt2_serving.handler import input_fn, model_fn, output_fn, predict_fn  # noqa: F401
'''
WEIGHT_NAMES = (".params", "model.safetensors", "pytorch_model.bin")


class PackagingError(ServingError):
    status = 400
    kind = "packaging_error"


class Package(NamedTuple):
    path: str
    members: List[str]
    size: int  # bytes of the archive


def package(model_dir, output, validate=True):
    """Check (by loading, unless validate=False) and write the archive atomically."""
    files = find_model_files(model_dir)
    if validate:
        _load(model_dir)
    paths = sorted(files.paths(), key=os.path.basename)  # weights, tokenizer file(s), config.json
    tmp = output + ".partial"
    try:
        with tarfile.open(tmp, "w:gz") as tar:
            for path in paths:
                tar.add(path, arcname=os.path.basename(path), filter=_normalize)
            _add_bytes(tar, ENTRY_POINT, INFERENCE_PY.encode("utf-8"))
        os.replace(tmp, output)
    except OSError as e:
        _remove_quietly(tmp)
        raise PackagingError("cannot write {}: {}".format(output, e.strerror or e))
    members = [os.path.basename(p) for p in paths] + [ENTRY_POINT]
    return Package(output, members, os.path.getsize(output))


def check_archive(path):
    """Refuse an archive SageMaker would accept but our container could not serve, before a
    20-minute endpoint creation finds out. Returns the member names."""
    try:
        with tarfile.open(path, "r:gz") as tar:
            names = [m.name[2:] if m.name.startswith("./") else m.name for m in tar.getmembers() if m.isfile()]
    except (OSError, tarfile.TarError) as e:
        raise PackagingError("{} is not a readable .tar.gz: {}".format(path, e))
    unsafe = [n for n in names if n.startswith("/") or ".." in n.split("/")]
    if unsafe:
        raise PackagingError("{} has members outside the model directory: {}".format(path, ", ".join(unsafe)))
    if ENTRY_POINT not in names:
        raise PackagingError("{} has no {}: make it with `kogpt2-serving package --model-dir DIR -o {}`".format(
            path, ENTRY_POINT, os.path.basename(path)))
    if not any("/" not in n and n.endswith(WEIGHT_NAMES) for n in names):
        raise PackagingError("{} has no model weights at its top level (*.params, model.safetensors or "
                             "pytorch_model.bin); found: {}".format(path, ", ".join(sorted(names))))
    return names


def _load(model_dir):
    from ..files.loader import load_model

    started = time.time()
    loaded = load_model(model_dir)
    log.info("validated %s: loaded in %.1f s", model_dir, time.time() - started)
    return loaded


def _normalize(info):
    """No local user names or permissions in the archive."""
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    info.mode = 0o644
    return info


def _add_bytes(tar, name, data):
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mtime = int(time.time())
    info.mode = 0o644
    tar.addfile(info, io.BytesIO(data))


def _remove_quietly(path):
    try:
        os.remove(path)
    except OSError:
        pass
