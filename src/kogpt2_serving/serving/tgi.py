"""Text Generation Inference's API, for the native frontend: request bodies in, responses,
Server-Sent Events and errors out, in TGI's schema (``router/src/lib.rs``, ``server.rs``).

The routes follow TGI's semantics, not the HF toolkit's that ``/invocations`` keeps:

- ``return_full_text`` defaults to false; a body without ``parameters`` samples (TGI's
  ``default_parameters()`` has ``do_sample: true``); ``max_new_tokens`` left out means the rest
  of the model's positions (``max_total_tokens - input_length``), within this server's cap;
- a stop string ends a sequence when the text *ends* with it, and the text keeps it
  (:mod:`kogpt2_serving.generation.stopping`, style ``tgi``);
- ``truncate`` keeps the last N prompt tokens (TGI truncates on the left);
- token entries carry ``special``; ``</s>`` streams as its piece with ``special: true``;
- errors are ``{"error", "error_type"}`` with TGI's statuses: 422 ``validation`` for a bad
  request, 429 ``overloaded`` when the queue is full; in a stream, an error is an event.

TGI parameters this engine cannot honour (``best_of`` > 1, ``watermark``,
``decoder_input_details``, ``top_n_tokens``, ``grammar``, ``frequency_penalty``,
``adapter_id``) are refused with 422 naming them, unless they have their "off" value (what
``huggingface_hub.InferenceClient`` sends by default). Nothing here imports MXNet or aiohttp.
"""
import json
from typing import NamedTuple, Optional

from .. import __version__
from ..errors import InvalidParameter, ServingError, UnsupportedContentType
from ..generation.params import MAX_NEW_TOKENS, MAX_STOP_SEQUENCES, GenerationParameters, parse_parameters
from ..generation.scheduler import QueueFull, QueueTimeout
from ..generation.stopping import TGI
from . import codec

REQUEST_KEYS = ("inputs", "parameters", "stream")
OURS = ("temperature", "repetition_penalty", "top_k", "top_p", "typical_p", "do_sample", "max_new_tokens",
        "return_full_text", "stop", "details", "seed")
OFF = {  # TGI parameters this server does not implement, and the values that mean "not used"
    "best_of": (None, 1), "frequency_penalty": (None, 0, 0.0), "watermark": (None, False),
    "decoder_input_details": (None, False), "top_n_tokens": (None, 0), "grammar": (None,), "adapter_id": (None,),
}
PARAMETERS = OURS + ("truncate",) + tuple(OFF)
MAX_TOTAL_TOKENS_HEADROOM = 1  # a prompt needs at least one position left to generate into


class TgiRequest(NamedTuple):
    inputs: str
    params: GenerationParameters  # max_new_tokens is a placeholder when `max_new_tokens_given` is False
    max_new_tokens_given: bool
    truncate: Optional[int]
    stream: bool


class ValidationError(ServingError):
    status = 422
    kind = "validation"


def parse_request(body, content_type, stream=None):
    """A TGI request body -> TgiRequest. `stream`: what the route decides (/generate: False,
    /generate_stream: True), None where the body's ``stream`` field does (POST /)."""
    media, charset = codec.request_media_type(content_type)
    if media != codec.JSON:
        raise UnsupportedContentType("this route takes application/json (TGI's GenerateRequest), got {}".format(
            media))
    value = codec.parse_json(codec.body_text(body, charset), "body")
    if not isinstance(value, dict):
        raise ValidationError('expected a JSON object {{"inputs": ..., "parameters": {{...}}}}, got {}'.format(
            codec.json_type(value)))
    unknown = sorted(set(value) - set(REQUEST_KEYS))
    if unknown:
        raise ValidationError("unknown field {!r}; allowed: {}".format(unknown[0], ", ".join(REQUEST_KEYS)))
    inputs = value.get("inputs")
    if not isinstance(inputs, str):
        raise ValidationError("`inputs` must be a string, got {}".format(codec.json_type(inputs)))
    if not inputs.strip():
        raise ValidationError("`inputs` cannot be empty")
    body_stream = value.get("stream", False)
    if not isinstance(body_stream, bool):
        raise ValidationError("`stream` must be true or false, got {}".format(codec.json_type(body_stream)))
    params, given, truncate = parse_tgi_parameters(value.get("parameters"), "parameters" in value)
    try:
        codec.check_prompt(inputs, "inputs")
    except ServingError as e:
        raise as_tgi_error(e)
    return TgiRequest(inputs, params, given, truncate, body_stream if stream is None else stream)


def parse_tgi_parameters(raw, present=True):
    """TGI's GenerateParameters -> (GenerationParameters, whether max_new_tokens was given,
    truncate). Absent altogether: TGI's defaults, which sample."""
    if raw is None:
        raw = {} if present else {"do_sample": True}
    if not isinstance(raw, dict):
        raise ValidationError("`parameters` must be a JSON object, got {}".format(codec.json_type(raw)))
    unknown = sorted(set(raw) - set(PARAMETERS))
    if unknown:
        raise ValidationError("unknown parameter {!r}; TGI's parameters are: {}".format(
            unknown[0], ", ".join(PARAMETERS)))
    for name, off in OFF.items():
        value = raw.get(name)
        if not any(value is v or (value == v and type(value) is type(v)) for v in off):
            raise ValidationError("`{}` is not supported by this server (got {}); leave it out or null".format(
                name, json.dumps(value, ensure_ascii=False)[:40]))
    truncate = raw.get("truncate")
    if truncate is not None and (isinstance(truncate, bool) or not isinstance(truncate, int) or truncate < 1):
        raise ValidationError("`truncate` must be a positive integer, got {}".format(
            json.dumps(truncate, ensure_ascii=False)[:40]))
    ours = {name: raw[name] for name in OURS if raw.get(name) is not None}
    ours.setdefault("return_full_text", False)
    given = "max_new_tokens" in ours
    try:
        params = parse_parameters(ours)
    except ServingError as e:
        raise as_tgi_error(e)
    # The engine always reports log-probabilities on these routes (token events carry them).
    return params._replace(stop_style=TGI), given, truncate


def fit_to_prompt(request, ids, positions):
    """The prompt's ids after `truncate`, and the parameters with max_new_tokens resolved."""
    if request.truncate is not None:
        ids = ids[-request.truncate:]
    params = request.params
    if not request.max_new_tokens_given:
        room = max(MAX_TOTAL_TOKENS_HEADROOM, positions - len(ids))
        params = params._replace(max_new_tokens=min(MAX_NEW_TOKENS, room))
    return ids, params


def engine_params(params):
    """What the engine decodes with: details always (a streamed token carries its logprob)."""
    return params._replace(details=True)


# --- responses ---------------------------------------------------------------------------------

def token_json(token, specials, pieces):
    """A TokenInfo as TGI's Token; a special token shows its piece (``</s>``), as TGI's does."""
    special = token.id in specials
    return {"id": token.id, "text": pieces(token.id) if special else token.text,
            "logprob": token.logprob if token.logprob is not None else 0.0, "special": special}


def generated_text(prompt, sequence, params):
    return (prompt if params.return_full_text else "") + sequence.text


def generate_response(prompt, sequence, params, details, specials, pieces):
    """TGI's GenerateResponse for one sequence."""
    answer = {"generated_text": generated_text(prompt, sequence, params)}
    if details:
        answer["details"] = {
            "finish_reason": sequence.finish_reason, "generated_tokens": sequence.generated_tokens,
            "seed": sequence.seed, "prefill": [],
            "tokens": [token_json(t, specials, pieces) for t in sequence.tokens or ()],
        }
    return answer


def stream_event(index, token_value, final=None):
    """One Server-Sent Event of TGI's StreamResponse; `final`: (generated_text, details or None)."""
    text, details = final if final is not None else (None, None)
    return sse({"index": index, "token": token_value, "generated_text": text, "details": details})


def stream_details(sequence, input_length):
    return {"finish_reason": sequence.finish_reason, "generated_tokens": sequence.generated_tokens,
            "seed": sequence.seed, "input_length": input_length}


def end_marker(eos_id):
    """The last event's token when the sequence ended without a final token of its own
    (``time_limit``): special, empty, so joined token texts still equal the text."""
    return {"id": eos_id, "text": "", "logprob": 0.0, "special": True}


def sse(value):
    return b"data:" + codec.dumps(value) + b"\n\n"


def as_tgi_error(error):
    """A ServingError with TGI's status and error_type (the message kept)."""
    if error.kind in (QueueFull.kind, QueueTimeout.kind):  # also as the engine sent it (a plain ServingError)
        mapped = ServingError(error.message)
        mapped.status, mapped.kind = 429, "overloaded"
        return mapped
    if 400 <= error.status < 500 and error.kind not in ("payload_too_large", "unsupported_content_type"):
        mapped = ValidationError(error.message)
        if isinstance(error, InvalidParameter):
            mapped.parameter = error.parameter
        return mapped
    return error


def info(model_id, positions, limits):
    """TGI's Info, with this server's numbers."""
    return {
        "model_id": model_id, "model_sha": None, "model_pipeline_tag": "text-generation",
        "max_concurrent_requests": limits.max_queue + limits.max_rows, "max_best_of": 1,
        "max_stop_sequences": MAX_STOP_SEQUENCES, "max_input_tokens": positions - MAX_TOTAL_TOKENS_HEADROOM,
        "max_total_tokens": positions, "validation_workers": 1, "max_client_batch_size": 1,
        "router": "kogpt2-serving", "version": __version__, "sha": None, "docker_label": None,
    }
