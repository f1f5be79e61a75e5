"""``kogpt2_serving.loader.load_model``, the scripting entry point; see
:mod:`kogpt2_serving.files.loader`."""
from .files.loader import LoadedModel, load_model  # noqa: F401
