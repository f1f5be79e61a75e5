"""Request bodies in, response bodies out: media types, charsets, request shapes, JSON.

What a body looks like decides how its answer looks (its *shape*):

============================================  ===========================================
request                                       answer (Accept: application/json)
============================================  ===========================================
application/json, a JSON **string**           ``[full_text, generated_tokens, seconds]``
(``MXNetPredictor.predict("...")``)           (the 2020 walkthrough's list, shape SDK)
application/json object                       ``[{"generated_text": ...}, ...]``, one per
``{"inputs": str | [str], "parameters": {}}`` input and returned sequence (shape HF)
text/plain (UTF-8 unless a charset is given)  as HF, default parameters (shape TEXT)
application/jsonlines                         one SDK or HF request per line; one answer
                                              per line with Accept application/jsonlines
============================================  ===========================================

Accept picks the encoding: application/json (also for ``*/*`` and a missing header),
text/plain (the generated text alone) or application/jsonlines (one JSON answer per line).
JSON goes out as UTF-8 with Korean unescaped.

Everything here validates at the edge and raises :mod:`~kogpt2_serving.errors` classes that
carry the HTTP status; inner code gets typed values. Decoding and encoding dispatch on the
media type through tables, not if-chains. Nothing here imports MXNet.
"""
import codecs
import json
from typing import List, NamedTuple, Tuple

from ..errors import (BadRequest, InvalidParameter, RequestTooCostly, ServingError, UnsupportedAccept,
                     UnsupportedContentType)
from ..generation.params import GenerationParameters, check_text, parse_parameters
from ..settings import request_limits

JSON = "application/json"
JSONLINES = "application/jsonlines"
TEXT = "text/plain"
ANY = "*/*"

SDK, HF, PLAIN = "sdk", "hf", "text"  # request shapes (see the module docstring)

MAX_PROMPTS = 64  # prompts per HTTP request, all inputs and jsonlines lines together
MAX_JSON_DEPTH = 16  # a valid request nests 3 deep ({"parameters": {"stop": [...]}})
REQUEST_KEYS = ("inputs", "parameters", "stream")
# Codecs Python can look up that are not charsets of a text body: str-to-str or bytes-to-bytes
# transforms (rot13, base64, zip, ...) fail codecs' text-encoding flag; these pass it but
# encode host names or Python literals, not documents.
NOT_CHARSETS = ("punycode", "idna", "unicode-escape", "raw-unicode-escape", "undefined")


class Prompt(NamedTuple):
    text: str
    params: GenerationParameters


class Request(NamedTuple):
    """One JSON value (or one jsonlines line, or a text/plain body) and its prompts."""

    shape: str  # SDK | HF | PLAIN: how its answer is rendered
    prompts: Tuple[Prompt, ...]
    stream: bool = False  # "stream": true (HF shape, a frontend that streams): Server-Sent Events


class Payload(NamedTuple):
    """What input_fn returns: the requests of one HTTP body."""

    requests: Tuple[Request, ...]
    lines: bool  # the body was jsonlines: a JSON answer is then a list, one entry per line

    @property
    def prompts(self):
        return [prompt for request in self.requests for prompt in request.prompts]

    @property
    def outputs(self):
        """How many generated texts the answer will hold."""
        return sum(p.params.num_return_sequences for p in self.prompts)


class Answer(NamedTuple):
    request: Request
    sequences: List[list]  # per prompt: its generation.Sequence list
    seconds: float  # generation time of the batch(es) this request was decoded in


class Prediction(NamedTuple):
    """What predict_fn returns and output_fn encodes."""

    answers: Tuple[Answer, ...]
    lines: bool

    @property
    def outputs(self):
        return sum(len(seqs) for answer in self.answers for seqs in answer.sequences)


# --- media types -----------------------------------------------------------------------------

def parse_media_type(header):
    """'Application/JSON; charset=UTF-8' -> ('application/json', {'charset': 'UTF-8'})."""
    media, _, rest = (header or "").partition(";")
    params = {}
    for item in rest.split(";"):
        key, sep, value = item.partition("=")
        if sep:
            params[key.strip().lower()] = value.strip().strip('"')
    return media.strip().lower(), params


def request_media_type(content_type):
    """The supported media type of a Content-Type header (missing: application/json)."""
    media, params = parse_media_type(content_type)
    media = media or JSON
    media = ALIASES.get(media, media)
    if media not in DECODERS:
        raise UnsupportedContentType("unsupported content type {!r}; use one of: {}".format(
            printable(content_type), ", ".join(sorted(DECODERS))))
    return media, params.get("charset")


def choose_accept(accept, default=JSON):
    """The media type to answer with: the first supported entry of Accept, by q-value then
    order; `*/*` and a missing header mean `default` (SAGEMAKER_DEFAULT_INVOCATIONS_ACCEPT)."""
    entries = []
    for position, item in enumerate((accept or ANY).split(",")):
        media, params = parse_media_type(item)
        try:
            q = float(params.get("q", 1))
        except ValueError:
            q = 1.0
        if media and q > 0:
            entries.append((-q, position, media))
    for _, _, media in sorted(entries):
        if media == ANY:
            media = default
        media = WILDCARDS.get(media, ALIASES.get(media, media))
        if media in ENCODERS:
            return media
    raise UnsupportedAccept("cannot answer with {!r}; supported Accept types: {}".format(
        printable(accept), ", ".join(sorted(ENCODERS))))


def check_accept(payload, accept, default=JSON):
    """Raise 406 before any generation when the answer cannot be given as `accept`."""
    media = choose_accept(accept, default)
    if media == TEXT and payload.outputs != 1:
        raise UnsupportedAccept(_one_text_message(payload.outputs))
    return media


# --- request bodies --------------------------------------------------------------------------

def decode_payload(body, content_type, limits=None, streaming=False):
    """A request body (str or bytes) and its Content-Type -> Payload, or a 4xx error.
    `limits`: a settings.RequestLimits (default: from the environment). `streaming`: whether
    the frontend can stream (the native one), so that ``"stream": true`` is taken."""
    media, charset = request_media_type(content_type)
    text = body_text(body, charset)
    payload = DECODERS[media](text)
    if any(request.stream for request in payload.requests):
        _check_streamable(payload, streaming)
    count = len(payload.prompts)
    if count > MAX_PROMPTS:
        raise BadRequest("a request holds at most {} prompts (inputs and jsonlines lines together), got {}"
                         .format(MAX_PROMPTS, count))
    check_budget(payload, limits or request_limits())
    return payload


def check_budget(payload, limits):
    """Refuse (400) a request whose decoding would cost more than the per-request budget."""
    rows = sum(prompt.params.rows for prompt in payload.prompts)
    tokens = sum(prompt.params.rows * prompt.params.max_new_tokens for prompt in payload.prompts)
    check_cost(rows, tokens, len(payload.prompts), limits)


def check_cost(rows, tokens, prompts, limits):
    """check_budget for a request's totals: `rows` decode rows, `tokens` new tokens over `prompts`."""
    if rows > limits.max_rows or tokens > limits.max_new_tokens:
        raise RequestTooCostly(
            "this request needs {} decode rows and {} new tokens over {} prompt(s) (a prompt decodes num_beams "
            "rows with beam search, else num_return_sequences rows, each up to max_new_tokens); this server allows "
            "at most {} rows and {} new tokens per request: send fewer prompts or sequences, or a smaller "
            "max_new_tokens".format(rows, tokens, prompts, limits.max_rows, limits.max_new_tokens))


def body_text(body, charset=None):
    """bytes -> str with the given charset (UTF-8 by default, a BOM tolerated)."""
    if body is None:
        body = b""
    if isinstance(body, str):
        return body
    name = _charset(charset)
    try:
        return bytes(body).decode(name)
    except UnicodeDecodeError as e:
        bad = bytes(body)[e.start:e.start + 1]
        raise BadRequest("body is not valid {}: {} (byte 0x{} at offset {})".format(
            name.replace("-sig", ""), e.reason, bad.hex(), e.start))
    except (UnicodeError, ValueError) as e:  # a codec's own error type
        raise BadRequest("body is not valid {}: {}".format(name, printable(e)))


def _charset(charset):
    """The codec for a charset parameter (UTF-8 by default, a BOM tolerated); 415 for a name
    Python does not know or a codec that does not turn bytes into text."""
    try:
        info = codecs.lookup((charset or "utf-8").strip().lower())
    except LookupError:
        raise UnsupportedContentType("unsupported charset {!r}; send UTF-8".format(printable(charset)))
    if not getattr(info, "_is_text_encoding", True) or info.name in NOT_CHARSETS:
        raise UnsupportedContentType("charset {!r} is not a text encoding; send UTF-8".format(printable(charset)))
    return "utf-8-sig" if info.name == "utf-8" else info.name


def _from_json(text):
    value = parse_json(text, "body")
    return Payload((_request(value, ""),), lines=False)


def _from_text(text):
    check_prompt(text, "text/plain body")
    return Payload((Request(PLAIN, (Prompt(text, parse_parameters(None)),)),), lines=False)


def _from_jsonlines(text):
    requests = []
    for number, line in enumerate(text.splitlines(), 1):
        if line.strip():
            where = "line {}: ".format(number)
            requests.append(_request(parse_json(line, where.rstrip(": ")), where))
    if not requests:
        raise BadRequest("jsonlines body holds no request (one JSON string or object per line)")
    return Payload(tuple(requests), lines=True)


def _request(value, where):
    """A JSON string (SDK shape) or a {"inputs", "parameters"} object (HF shape)."""
    try:
        if isinstance(value, str):
            check_prompt(value, "the JSON string")
            return Request(SDK, (Prompt(value, parse_parameters(None)),))
        if isinstance(value, dict):
            return _hf_request(value)
        raise BadRequest('expected a JSON string (the prompt) or an object {{"inputs": ..., "parameters": {{...}}}}, '
                         'got {}'.format(json_type(value)))
    except ServingError as e:
        raise _located(e, where)


def _hf_request(value):
    unknown = sorted(set(value) - set(REQUEST_KEYS))
    if unknown:
        raise BadRequest("unknown field {!r} in the request object; allowed: {}".format(
            printable(unknown[0]), ", ".join(REQUEST_KEYS)))
    stream = value.get("stream", False)
    if not isinstance(stream, bool):
        raise InvalidParameter("stream", "stream must be true or false, got {}".format(json_type(stream)))
    if "inputs" not in value:
        raise InvalidParameter("inputs", 'the request object needs "inputs": a string or a list of strings')
    inputs = value["inputs"]
    if isinstance(inputs, str):
        texts = [inputs]
        names = ["inputs"]
    elif isinstance(inputs, list) and inputs and all(isinstance(t, str) for t in inputs):
        texts = inputs
        names = ["inputs[{}]".format(i) for i in range(len(inputs))]
    else:
        raise InvalidParameter("inputs", "inputs must be a string or a non-empty list of strings, got {}".format(
            json_type(inputs) if not isinstance(inputs, list) else _list_problem(inputs)))
    for text, name in zip(texts, names):
        check_prompt(text, name)
    params = parse_parameters(value.get("parameters"))
    return Request(HF, tuple(Prompt(text, params) for text in texts), stream)


def _check_streamable(payload, streaming):
    """TGI clients send "stream": false; streaming itself needs a frontend that can stream, and
    one stream carries one sequence, as TGI's does."""
    if not streaming:
        raise InvalidParameter("stream", 'streaming is not supported by this server (Multi Model Server answers '
                                         'each request in one response): send "stream": false or leave it out, '
                                         'or serve with --frontend native')
    if payload.lines:
        raise InvalidParameter("stream", '"stream": true takes one JSON object, not jsonlines')
    prompts = payload.prompts
    if len(prompts) != 1:
        raise InvalidParameter("stream", '"stream": true streams one prompt; "inputs" holds {}'.format(len(prompts)))
    params = prompts[0].params
    if params.uses_beams or params.num_return_sequences != 1:
        raise InvalidParameter("stream", '"stream": true streams one sequence; num_beams and num_return_sequences '
                                         'must be 1 (got {} and {})'.format(params.num_beams,
                                                                            params.num_return_sequences))


def check_prompt(text, name):
    check_text(text, name, "inputs")
    if not text.strip():
        raise InvalidParameter("inputs", "{} must be a non-empty prompt, got {!r}".format(name, text[:20]))


def parse_json(text, where):
    try:
        value = json.loads(text, parse_constant=_reject_constant)
    except ValueError as e:  # json.JSONDecodeError, or a constant we refuse
        detail = "{} at line {} column {}".format(e.msg, e.lineno, e.colno) if hasattr(e, "msg") else str(e)
        raise BadRequest("{} is not valid JSON: {}".format(where, detail))
    except RecursionError:  # the parser recurses once per nesting level
        raise _too_deep(where)
    if _depth_exceeds(value, MAX_JSON_DEPTH):  # or later code (repr in a message) could exhaust the stack
        raise _too_deep(where)
    return value


def _depth_exceeds(value, limit):
    """Whether arrays/objects nest deeper than `limit` (iterative: no recursion to exhaust)."""
    level = [value] if isinstance(value, (list, dict)) else []  # the containers at depth 1, 2, ...
    for _ in range(limit):
        if not level:
            return False
        level = [child for item in level for child in (item.values() if isinstance(item, dict) else item)
                 if isinstance(child, (list, dict))]
    return bool(level)


def _too_deep(where):
    return BadRequest("{} nests JSON arrays or objects deeper than {} levels (a request needs 3)".format(
        where, MAX_JSON_DEPTH))


def _reject_constant(name):
    raise ValueError("{} is not a JSON number".format(name))


def _located(error, where):
    """The same error with its location ('line 3: ') in front of the message."""
    if where:
        error.message = where + error.message
        error.args = (error.message,)
    return error


# --- response bodies -------------------------------------------------------------------------

def encode_prediction(prediction, media):
    """Prediction -> (body bytes, content type) for a media type from choose_accept."""
    return ENCODERS[media](prediction)


def _as_json(prediction):
    values = [RENDERERS[a.request.shape](a) for a in prediction.answers]
    return dumps(values if prediction.lines else values[0]), JSON


def _as_jsonlines(prediction):
    lines = [dumps(RENDERERS[a.request.shape](a)) for a in prediction.answers]
    return b"".join(line + b"\n" for line in lines), JSONLINES


def _as_text(prediction):
    texts = [text for answer in prediction.answers for text in _texts(answer)]
    if len(texts) != 1:
        raise UnsupportedAccept(_one_text_message(len(texts)))
    return texts[0].encode("utf-8"), TEXT + "; charset=utf-8"


def _sdk_value(answer):
    """The 2020 walkthrough's answer: [prompt + continuation, generated tokens, seconds]."""
    prompt, sequence = answer.request.prompts[0], answer.sequences[0][0]
    return [prompt.text + sequence.text, sequence.generated_tokens, answer.seconds]


def _hf_value(answer):
    entries = []
    for prompt, sequences in zip(answer.request.prompts, answer.sequences):
        for sequence in sequences:
            entry = {"generated_text": _generated_text(prompt, sequence)}
            if prompt.params.details:
                entry["details"] = _details(sequence)
            entries.append(entry)
    return entries


def _texts(answer):
    if answer.request.shape == SDK:
        return [_sdk_value(answer)[0]]
    return [entry["generated_text"] for entry in _hf_value(answer)]


def _generated_text(prompt, sequence):
    return (prompt.text if prompt.params.return_full_text else "") + sequence.text


def _details(sequence):
    return {
        "finish_reason": sequence.finish_reason,
        "generated_tokens": sequence.generated_tokens,
        "seed": sequence.seed,
        "tokens": [{"id": t.id, "text": t.text, "logprob": t.logprob} for t in sequence.tokens or ()],
    }


def error_body(error):
    """The JSON body of an error answer: {"error": message, "error_type": kind}."""
    return dumps({"error": error.message, "error_type": error.kind})


def dumps(value):
    try:
        return json.dumps(value, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError:  # a lone surrogate (e.g. echoed in a message): \u-escape it instead
        return json.dumps(value).encode("ascii")


def _one_text_message(count):
    return ("Accept text/plain carries exactly one generated text, but this request asks for {}; "
            "use application/json or application/jsonlines".format(count))


def json_type(value):
    return {dict: "an object", list: "an array", str: "a string", bool: "a boolean", type(None): "null",
            int: "a number", float: "a number"}.get(type(value), type(value).__name__)


def _list_problem(values):
    if not values:
        return "an empty list"
    index = next(i for i, v in enumerate(values) if not isinstance(v, str))
    return "{} at inputs[{}]".format(json_type(values[index]), index)


def printable(text):
    """Header values echoed in messages: printable ASCII only, bounded."""
    text = "" if text is None else str(text)
    clean = text.encode("ascii", "backslashreplace").decode("ascii")
    return clean if len(clean) <= 60 else clean[:57] + "..."


DECODERS = {JSON: _from_json, TEXT: _from_text, JSONLINES: _from_jsonlines}
ENCODERS = {JSON: _as_json, TEXT: _as_text, JSONLINES: _as_jsonlines}
RENDERERS = {SDK: _sdk_value, HF: _hf_value, PLAIN: _hf_value}
ALIASES = {"application/x-jsonlines": JSONLINES, "application/jsonl": JSONLINES, "application/x-ndjson": JSONLINES}
WILDCARDS = {"application/*": JSON, "text/*": TEXT}
