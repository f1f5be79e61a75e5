"""``kogpt2_serving.mxnet_entry``: ``model_fn`` + ``transform_fn`` for AWS's stock MXNet
inference container (``from kogpt2_serving.mxnet_entry import model_fn, transform_fn`` in
``code/inference.py``); see :mod:`kogpt2_serving.serving.mxnet_entry`."""
from .serving.mxnet_entry import model_fn, transform_fn  # noqa: F401

__all__ = ["model_fn", "transform_fn"]
