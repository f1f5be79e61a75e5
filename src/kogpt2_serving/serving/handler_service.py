"""The Multi Model Server handler service: ``kogpt2_serving.handler_service``.

MMS instantiates the one class of this module in each worker, calls ``initialize(context)``
once and ``handle(data, context)`` for every batch of requests (one request unless the
model was registered with ``batch_size`` > 1). It plays the toolkit's
``DefaultHandlerService`` + ``Transformer`` roles, with three differences:

- Errors are answered here, per request: the HTTP status from the error, an ASCII reason
  phrase (a non-ASCII phrase kills the MMS worker: MMS packs its length in characters but
  writes UTF-8 bytes) and a JSON body ``{"error": message, "error_type": kind}`` without a
  traceback. Anything that is not a ServingError (or a toolkit error a user's code raised)
  is logged with its traceback and answered as a plain 500.
- A batch shares decode steps (:func:`kogpt2_serving.handler.predict_batch`) while
  ``predict_fn`` is the package's; with a user's ``predict_fn`` or ``transform_fn`` each
  request runs on its own, and each gets its own status and content type (the toolkit's
  Transformer answers every request of a batch with the first one's headers).
- A model that failed to load is logged once with its cause; every request then gets 500
  ``model_error`` (MMS swallows exceptions from ``initialize``, so raising would only give
  ``'NoneType' ... transform`` errors later).

Which functions run follows the toolkit's rule (:mod:`kogpt2_serving.serving.handler_functions`).
Keep exactly one class in this module: MMS refuses a service module with more.
"""
import logging
import os
from http.client import responses

from ..errors import ModelLoadError, ServingError, cause_of
from ..generation.scheduler import Cancelled
from ..generation.stopping import TIME_LIMIT
from . import codec, handler
from .engine_client import RequestMeta
from .gateway import RECEIVED_HEADER, REQUEST_ID_HEADER
from .handler_functions import add_code_dir, call, resolve

log = logging.getLogger(__name__)

UTF8_TYPES = ("application/json", "text/csv")  # bodies the toolkit hands over as str
FINISH_REASON_HEADER = "X-Kogpt2-Finish-Reason"  # time_limit: a sequence stopped at the request timeout


class HandlerService(object):
    def __init__(self):
        self._functions = None
        self._model = None
        self._load_error = ModelLoadError("the model is not loaded yet")

    def initialize(self, context):
        model_dir = context.system_properties.get("model_dir")
        if model_dir:  # `serve` registers the model store's "." (MMS passes "<store>/.")
            model_dir = os.path.normpath(model_dir)
        try:
            add_code_dir(model_dir)
            functions = resolve()
            if functions.pre_model_fn is not None:
                call(functions.pre_model_fn, (model_dir,), context)
            model = call(functions.model_fn, (model_dir,), context)
            if functions.model_warmup_fn is not None:
                call(functions.model_warmup_fn, (model_dir, model), context)
        except Exception as e:  # noqa: B902 -- logged; clients get a plain model_error
            # One line with the cause first: `serve` reads it for its start-up error.
            log.error("loading the model from %s failed: %s", model_dir, _cause(e))
            if not isinstance(e, ServingError):  # a bug (ours or a user's model_fn): its traceback too
                log.error("traceback of the load failure", exc_info=e)
            self._load_error = ModelLoadError("the model failed to load; see the server log")
            return
        self._functions, self._model = functions, model
        log.info("model ready (handler functions from %s)", functions.user_module or "kogpt2_serving.handler")

    def handle(self, data, context):
        if data is None:
            return None
        headers = [_headers(context, i) for i in range(len(data))]
        incoming = [_incoming(item, h) for item, h in zip(data, headers)]
        metas = [_meta(h) for h in headers]
        if self._functions is None:
            return [_fail(context, i, self._load_error) for i in range(len(data))]
        if self._functions.transform_fn is not None:
            return [self._transform(context, i, *request) for i, request in enumerate(incoming)]
        if self._functions.batchable:
            return self._batched(context, incoming, metas)
        return [self._one(context, i, *request) for i, request in enumerate(incoming)]

    def _transform(self, context, i, body, content_type, accept):
        try:
            body = _toolkit_body(body, content_type)
            result = call(self._functions.transform_fn, (self._model, body, content_type, accept), context)
            return _respond(context, i, result, accept)
        except Exception as e:  # noqa: B902 -- every failure becomes a JSON error answer
            return _fail(context, i, e)

    def _one(self, context, i, body, content_type, accept):
        fns = self._functions
        try:
            data = call(fns.input_fn, (_toolkit_body(body, content_type), content_type), context)
            prediction = call(fns.predict_fn, (data, self._model), context)
            return _respond(context, i, call(fns.output_fn, (prediction, accept), context), accept)
        except Exception as e:  # noqa: B902
            return _fail(context, i, e)

    def _batched(self, context, incoming, metas):
        """input_fn per request, one shared predict for the valid ones, output_fn per request."""
        fns = self._functions
        answers = [None] * len(incoming)
        pending = []  # (index, payload, its answer's media type when output_fn is ours)
        for i, (body, content_type, accept) in enumerate(incoming):
            try:
                payload = call(fns.input_fn, (_toolkit_body(body, content_type), content_type), context)
                media = None
                if fns.output_fn is handler.output_fn:  # negotiated once, before generation: a 406 costs none
                    media = codec.check_accept(payload, accept, handler.default_accept())
                pending.append((i, payload, media))
            except Exception as e:  # noqa: B902
                answers[i] = _fail(context, i, e)
        if pending:
            try:
                outcomes = handler.predict_batch([payload for _, payload, _ in pending], self._model,
                                                 [metas[i] for i, _, _ in pending])
            except Exception as e:  # noqa: B902 -- a fault in generation fails the whole batch
                outcomes = [e] * len(pending)
            for (i, _, media), outcome in zip(pending, outcomes):
                try:
                    if isinstance(outcome, Exception):
                        raise outcome
                    accept = incoming[i][2]
                    result = (codec.encode_prediction(outcome, media) if media
                              else call(fns.output_fn, (outcome, accept), context))
                    answers[i] = _respond(context, i, result, accept)
                    if stopped_for_time(outcome):
                        context.set_response_header(i, FINISH_REASON_HEADER, TIME_LIMIT)
                except Exception as e:  # noqa: B902
                    answers[i] = _fail(context, i, e)
        if len(incoming) > 1:
            log.info("batch of %d request(s): %d decoded together", len(incoming), len(pending))
        return answers


def _cause(error):
    return error.message if isinstance(error, ServingError) else "{}: {}".format(type(error).__name__, cause_of(error))


def _incoming(item, headers):
    """(body, Content-Type, Accept) of a request, from its _headers; Accept missing or */* -> the
    default."""
    content_type = headers.get("contenttype")
    if not content_type and isinstance(headers.get("body"), dict):
        content_type = headers["body"].get("content-type")
    accept = headers.get("accept")
    if not accept or accept == codec.ANY:
        accept = handler.default_accept()
    return (item or {}).get("body"), content_type or None, accept


def _meta(headers):
    """The gateway's request id and arrival time (headers it sets, replacing any a client sent)."""
    received = headers.get(_key(RECEIVED_HEADER))
    try:
        received = float(received) if received else None
    except ValueError:
        received = None
    return RequestMeta(headers.get(_key(REQUEST_ID_HEADER)) or None, received)


def _headers(context, i):
    """Request i's headers by _key(name); values as str."""
    headers = context.request_processor[i].get_request_properties() or {}
    return {_key(k): (v.decode("latin-1") if isinstance(v, bytes) else v) for k, v in headers.items()}


def _key(name):
    return str(name).lower().replace("-", "")


def _toolkit_body(body, content_type):
    """As the toolkit does: exact application/json and text/csv bodies become str."""
    if content_type in UTF8_TYPES and isinstance(body, (bytes, bytearray)):
        return codec.body_text(body, "utf-8")
    return body


def stopped_for_time(prediction):
    """Whether a sequence ended at the request timeout: the answer's header says so even when
    its body (the SDK list, HF without details) has no place for a finish reason."""
    return any(s.finish_reason == TIME_LIMIT for answer in prediction.answers
               for sequences in answer.sequences for s in sequences)


def _respond(context, i, result, accept):
    body, content_type = result if isinstance(result, tuple) else (result, accept)
    context.set_response_content_type(i, content_type)
    return body


def _fail(context, i, error):
    status, body = _error_answer(error)
    phrase = responses.get(status, "Error")  # ASCII by construction
    context.set_response_status(code=status, phrase=phrase, idx=i)
    context.set_response_content_type(i, codec.JSON)
    return body


def _error_answer(error):
    if isinstance(error, ServingError):
        if error.kind == Cancelled.kind:  # its client is gone: nobody reads this answer
            log.info("request cancelled: %s", error.message)
        elif error.status >= 500:
            log.error("request failed: %s", error.message)
        return error.status, codec.error_body(error)
    status = getattr(error, "status_code", None)  # sagemaker_inference's BaseInferenceToolkitError
    if isinstance(status, int) and 400 <= status < 600 and hasattr(error, "message"):
        log.warning("handler function raised %s: %s", type(error).__name__, error.message)
        wrapped = ServingError(str(error.message))
        wrapped.kind = "inference_error"
        return status, codec.error_body(wrapped)
    log.error("request failed with an unexpected error", exc_info=error)
    internal = ServingError("internal server error; see the server log")
    return internal.status, codec.error_body(internal)
