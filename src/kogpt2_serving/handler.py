"""``kogpt2_serving.handler``: the SageMaker handler functions, as users name them in
``inference.py``. They live in :mod:`kogpt2_serving.serving.handler`."""
from .serving.handler import (  # noqa: F401
    ServingModel, default_accept, input_fn, model_fn, output_fn, predict_batch, predict_fn)
