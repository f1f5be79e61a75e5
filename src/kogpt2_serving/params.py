"""``kogpt2_serving.params.parse_parameters``, the scripting entry point; see
:mod:`kogpt2_serving.generation.params`."""
from .generation.params import GenerationParameters, parse_parameters  # noqa: F401
