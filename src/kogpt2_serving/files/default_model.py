"""Which model directory to serve when none was named, or when the named one holds no model:
SageMaker's mounted model, else the demo model shipped in the package.

A model.tar.gz with only ``code/`` (an ``inference.py`` and requirements) is a common way to try
an image; serving the demo model then, and saying so in the log, beats failing to start.
"""
import os

from ..settings import BASE_DIR_ENV
from .model_dir import HF_WEIGHTS, TOKENIZER_JSON


DEMO_MODEL_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "demo_model")


def sagemaker_model_dir():
    """Where SageMaker mounts model.tar.gz's contents (SAGEMAKER_BASE_DIR, default /opt/ml)."""
    return os.path.join(os.environ.get(BASE_DIR_ENV, "/opt/ml"), "model")


def default_model_dir():
    """(directory, description) when no model directory was named: SageMaker's model
    directory if it holds model files, else the demo model shipped in this package."""
    mounted = sagemaker_model_dir()
    if holds_model_files(mounted):
        return mounted, "the SageMaker model directory"
    return DEMO_MODEL_DIR, "the demo model shipped with kogpt2-serving (pass --model-dir for real KoGPT2 files)"


def holds_model_files(directory):
    """Whether a directory has any weights or tokenizer file (of either format)."""
    if not os.path.isdir(directory):
        return False
    return any(n.endswith((".params", ".spiece")) or n in HF_WEIGHTS + (TOKENIZER_JSON,)
               for n in os.listdir(directory))


def or_demo_model(directory, log=None):
    """`directory`, unless it holds no model files at all (a model.tar.gz with only code/):
    then the shipped demo model, said in the log. A directory with some but not all of a
    model's files, or that does not exist, is left as it is, so that loading it names the problem."""
    if not os.path.isdir(directory) or holds_model_files(directory):
        return directory
    if log is not None:
        log.info("%s holds no model files: using the demo model shipped with kogpt2-serving at %s",
                 directory, DEMO_MODEL_DIR)
    return DEMO_MODEL_DIR


def resolve_model_dir(requested, log=None):
    """The directory to load: `requested`, or the default, saying which in the log."""
    if requested:
        return requested
    directory, description = default_model_dir()
    if log is not None:
        log.info("no model directory given: using %s at %s", description, directory)
    return directory
