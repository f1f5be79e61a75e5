"""``model_fn`` + ``transform_fn`` for the stock SageMaker MXNet serving container.

The MXNet toolkit's own handler service (``sagemaker_mxnet_serving_container``) needs a user
module (``code/inference.py`` in model.tar.gz) and only accepts a non-Gluon model from
``model_fn`` when that module defines ``transform_fn``; defining ``transform_fn`` together
with ``input_fn``/``predict_fn``/``output_fn`` is an error. So the whole ``inference.py`` is::

    from kogpt2_serving.mxnet_entry import model_fn, transform_fn  # noqa: F401

with ``kogpt2-serving`` installed in the image (or listed in ``code/requirements.txt``).
The 2020 walkthrough's client keeps working: a JSON string body gets
``[full_text, generated_tokens, seconds]``.

Errors: where the toolkit passes the MMS context (``transform_fn`` has a fifth parameter;
sagemaker-inference >= 1.6 does this by arity) the status and JSON body are set here, like
our own handler service does. An older toolkit calls ``transform_fn`` with four arguments;
errors are then raised as the toolkit's ``GenericInferenceToolkitError`` with the right
status and an ASCII phrase, and the toolkit appends its traceback to the body: that path
cannot do better. ``model_fn`` loads once per process although the MXNet toolkit calls it
twice per worker.
"""
from http.client import responses

from ..errors import ServingError
from . import codec
from .handler import default_accept, input_fn, model_fn, predict_fn

__all__ = ["model_fn", "transform_fn"]


def transform_fn(model, request_body, content_type, accept, context=None):
    """Body -> (response body, content type): input_fn, predict_fn and output_fn in one."""
    try:
        payload = input_fn(request_body, content_type)
        media = codec.check_accept(payload, accept, default_accept())  # once, before generating
        return codec.encode_prediction(predict_fn(payload, model), media)
    except ServingError as e:
        if context is None:
            raise _toolkit_error(e)
        context.set_response_status(code=e.status, phrase=responses.get(e.status, "Error"))
        return codec.error_body(e), codec.JSON


def _toolkit_error(error):
    try:
        from sagemaker_inference.errors import GenericInferenceToolkitError
    except ImportError:  # not inside a SageMaker toolkit: the ServingError itself is clearest
        return error
    return GenericInferenceToolkitError(error.status, codec.error_body(error).decode("utf-8"),
                                        responses.get(error.status, "Error"))
