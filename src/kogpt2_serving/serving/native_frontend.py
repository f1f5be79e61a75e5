"""The native frontend (``serve --frontend native``): aiohttp in the ``serve`` process, talking
to the engine process directly, so that tokens can stream.

Multi Model Server 1.1.11 cannot stream (one reply per batch, with a Content-Length), so this
frontend replaces MMS *and* its light workers: it decodes and validates a request exactly as
the handler service does (:mod:`.codec`, the same errors and statuses), encodes its prompts,
sends them to an engine over its unix socket (:mod:`.engine_pool` picks one per request when
``serve`` runs several), and renders the answer. Routes:

- ``GET /ping``: 200 once the engine is ready and healthy, else 503 (``health()``);
- ``POST /invocations``: the formats, parameters, errors and statuses of the MMS path; with
  ``"stream": true`` in an HF-shape body, Server-Sent Events in TGI's schema;
- TGI's ``POST /generate``, ``POST /generate_stream``, ``POST /`` (``stream`` in the body
  decides), ``GET /info`` and ``GET /health`` (:mod:`.tgi`).

Everything else is 404, a wrong method 405 with ``Allow``, in the package's error schema;
nothing loads code or files a request names. A client that disconnects cancels its request
in the engine (aiohttp cancels the handler, which closes its engine connection). ``drain()``
answers new requests 503 and waits for those in flight. HTTP-level garbage (a malformed
request line, an oversized header) is answered by aiohttp itself, as plain text.
"""
import asyncio
import inspect
import logging
import time
import uuid
from http.client import responses

from aiohttp import web, web_server

from ..errors import PromptTooLong, ServingError
from ..files.default_model import or_demo_model
from ..files.loader import load_tokenizer
from ..files.model_dir import find_model_files
from ..generation.generator import Prepared, TokenInfo
from ..generation.scheduler import check_fits
from ..generation.stopping import TIME_LIMIT
from ..settings import engine_limits, request_limits
from . import codec, handler, tgi
from .engine_async import checked
from .engine_protocol import error_from_json
from .engine_client import (ANSWER_MARGIN, RequestMeta, deadline_of, generate_message, prediction_of, prepare_items,
                            results_of)
from .engine_pool import EnginePool
from .handler_service import FINISH_REASON_HEADER, stopped_for_time
from .listener import HEALTHY, Listener, too_large_message

log = logging.getLogger(__name__)

class _OneLine(logging.Filter):
    """aiohttp logs a malformed request (a client's fault, answered 400) with a traceback: one
    warning line instead, so that a hostile client cannot fill the log. Handler errors never
    reach aiohttp (``_dispatch`` answers them)."""

    def filter(self, record):
        if record.exc_info:
            record.msg, record.args = "{}: {}".format(record.getMessage(), record.exc_info[1]), ()
            record.exc_info, record.exc_text = None, None
            record.levelno, record.levelname = logging.WARNING, "WARNING"
        return True


http_log = logging.getLogger(__name__ + ".http")
http_log.addFilter(_OneLine())

EVENT_STREAM = "text/event-stream"
ROUTES = {"/invocations": ("POST",), "/ping": ("GET", "HEAD"), "/generate": ("POST",),
          "/generate_stream": ("POST",), "/": ("POST",), "/info": ("GET",), "/health": ("GET",)}


class PayloadTooLarge(ServingError):
    status = 413
    kind = "payload_too_large"


class FrontendModel:
    """What the frontend needs of the model: its tokenizer, its positions (from an engine),
    the engines' limits, the ids TGI calls special, and the engines (`sockets`: a path, several
    joined by os.pathsep, or an EnginePool, which picks one per request)."""

    def __init__(self, model_dir, sockets):
        self.model_dir = model_dir
        self.engines = sockets if isinstance(sockets, EnginePool) else EnginePool(sockets)
        self.tokenizer = load_tokenizer(find_model_files(or_demo_model(model_dir, log)))
        self.limits = engine_limits()
        self.positions = int(self.engines.call({"op": "info"}, timeout=10)["positions"])
        tok = self.tokenizer
        self.specials = frozenset(i for i in (tok.bos_id, tok.eos_id, tok.pad_id, getattr(tok, "unk_id", None))
                                  if i is not None)

    def piece(self, token_id):
        return self.tokenizer.id_to_piece(token_id)

    def token(self, value):
        """An engine token event's [id, text, logprob] as TGI's Token."""
        return tgi.token_json(TokenInfo(*value), self.specials, self.piece)


class NativeFrontend(Listener):
    """Listens on (host, port); `health()` is None when healthy, else why not. `attach(model)`
    once the engine is ready; until then inference answers 503."""

    def __init__(self, host, port, max_body=6 * 1024 * 1024, health=None, model_id="kogpt2"):
        super().__init__("native-frontend", health)
        self.host, self.port = host, port
        self.max_body = max_body
        self.model_id = model_id
        self.model = None
        self._runner = None

    # --- life cycle ----------------------------------------------------------------------------

    async def _open(self):
        app = web.Application(client_max_size=self.max_body)
        app.router.add_route("*", "/{path:.*}", self._dispatch)
        options = {"access_log": None, "logger": http_log}
        if "handler_cancellation" in inspect.signature(web_server.Server).parameters:
            options["handler_cancellation"] = True  # aiohttp >= 3.9: cancel a handler whose client left (3.8 always does)
        runner = web.AppRunner(app, **options)
        await runner.setup()
        try:
            await web.TCPSite(runner, self.host, self.port).start()
        except OSError:
            await runner.cleanup()
            raise
        self._runner = runner

    async def _close(self):
        await self._runner.cleanup()

    def attach(self, model):
        self.model = model

    # --- routing -------------------------------------------------------------------------------

    async def _dispatch(self, request):
        if request.version.major != 1:
            return error_response(505, "bad_request", "HTTP version {}.{} is not supported".format(*request.version))
        path = request.path
        if path not in ROUTES:
            return error_response(404, "not_found", "no route {}; this server answers {}".format(
                codec.printable(path), ", ".join("{} {}".format(m[0], p) for p, m in ROUTES.items())))
        if request.method not in ROUTES[path]:
            allowed = ", ".join(ROUTES[path])
            return error_response(405, "method_not_allowed", "{} {} is not supported; use {}".format(
                codec.printable(request.method), path, allowed), {"Allow": allowed})
        if path == "/ping":
            return self._ping()
        if path == "/health":
            return self._tgi_health()
        if path == "/info":
            return self._info()
        tgi_route = path != "/invocations"
        if self.draining or self.model is None:
            error = ServingError("the server is shutting down; retry the request" if self.draining
                                 else "the model is not loaded yet; retry the request")
            error.status, error.kind = 503, "shutting_down" if self.draining else "server_unavailable"
            return failure(error, tgi_route)
        self.in_flight += 1
        try:
            body = await self._body(request)
            if tgi_route:
                return await self._tgi(request, body, {"/generate": False, "/generate_stream": True}.get(path))
            return await self._invocations(request, body)
        except asyncio.CancelledError:  # the client disconnected (an Exception before Python 3.8)
            raise
        except PayloadTooLarge as e:
            answer = failure(e)
            answer.force_close()  # the rest of the body is not read
            return answer
        except ServingError as e:
            return failure(e, tgi_route)
        except Exception:  # noqa: B902 -- a bug must not show a traceback to the client
            log.exception("request failed with an unexpected error")
            return failure(ServingError("internal server error; see the server log"), tgi_route)
        finally:
            self.in_flight -= 1

    def _ping(self):
        problem = self.ping_problem()
        if problem:
            return error_response(503, "unhealthy", problem)
        return web.Response(body=HEALTHY, headers={"Content-Type": codec.JSON})

    def _tgi_health(self):
        if self.ping_problem():
            return error_response(503, "healthcheck", "unhealthy")
        return web.Response(status=200)

    def _info(self):
        if self.model is None:
            return error_response(503, "server_unavailable", "the model is not loaded yet")
        return json_response(tgi.info(self.model_id, self.model.positions, self.model.limits))

    async def _body(self, request):
        """The whole body, refused (413) past max_body before it is read where the length says."""
        length = request.content_length
        if length is not None and length > self.max_body:
            raise too_large(length, self.max_body)
        body = bytearray()
        while True:
            chunk = await request.content.readany()
            if not chunk:
                return bytes(body)
            body += chunk
            if len(body) > self.max_body:
                raise too_large(len(body), self.max_body)

    # --- POST /invocations ---------------------------------------------------------------------

    async def _invocations(self, request, body):
        accept = request.headers.get("Accept")
        if not accept or accept == codec.ANY:
            accept = handler.default_accept()
        payload = codec.decode_payload(body, request.headers.get("Content-Type") or None, streaming=True)
        model, meta = self.model, RequestMeta(uuid.uuid4().hex, time.time())
        if payload.requests[0].stream:
            prompt = payload.prompts[0]
            items = prepare_items(model.tokenizer, model.positions, [(prompt.text, tgi.engine_params(prompt.params))],
                                  model.limits)
            return await self._stream(request, items[0], prompt.text, prompt.params, meta)
        media = codec.check_accept(payload, accept, handler.default_accept())
        items = prepare_items(model.tokenizer, model.positions, [(p.text, p.params) for p in payload.prompts],
                              model.limits)
        prediction = prediction_of(payload, await self._exchange(generate_message(
            meta.request_id, items, deadline_of(meta, model.limits))))
        data, content_type = codec.encode_prediction(prediction, media)
        headers = {"Content-Type": content_type}
        if stopped_for_time(prediction):
            headers[FINISH_REASON_HEADER] = TIME_LIMIT
        return web.Response(body=data, headers=headers)

    # --- TGI -----------------------------------------------------------------------------------

    async def _tgi(self, request, body, stream):
        model, meta = self.model, RequestMeta(uuid.uuid4().hex, time.time())
        parsed = tgi.parse_request(body, request.headers.get("Content-Type") or None, stream)
        ids, params = tgi.fit_to_prompt(parsed, model.tokenizer.encode_prompt(parsed.inputs), model.positions)
        item = Prepared(ids, tgi.engine_params(params))
        try:
            PromptTooLong.check(len(ids), params.max_new_tokens, model.positions)
            check_fits([item], model.limits)
            codec.check_cost(1, params.max_new_tokens, 1, request_limits())  # TGI: one prompt, one sequence
        except ServingError as e:
            raise tgi.as_tgi_error(e)
        if parsed.stream:
            return await self._stream(request, item, parsed.inputs, params, meta)
        answer = await self._exchange(generate_message(meta.request_id, [item], deadline_of(meta, model.limits)))
        sequence = results_of(answer)[0][0]
        value = tgi.generate_response(parsed.inputs, sequence, params, params.details, model.specials, model.piece)
        return json_response([value] if request.path == "/" else value)

    # --- the engine ----------------------------------------------------------------------------

    async def _exchange(self, message):
        """One request to the engine and its answer (errors raised)."""
        async with self.model.engines.exchange() as engine:
            await engine.send(message)
            return checked(await engine.receive(_answer_timeout(message)))

    async def _stream(self, request, item, prompt, params, meta):
        """Server-Sent Events of one sequence: a token event as each token is chosen, the last
        with generated_text (and details when asked for). An error before the first token is an
        ordinary JSON answer with its status; after it, an error event (as TGI sends)."""
        model = self.model
        message = generate_message(meta.request_id, [item], deadline_of(meta, model.limits), stream=True)
        timeout = _answer_timeout(message)
        async with model.engines.exchange() as engine:
            await engine.send(message)
            event = await engine.receive(timeout)
            if event.get("event") != "token":
                checked(event)  # an error before any token: raised, answered with its status
            response = web.StreamResponse(headers={"Content-Type": EVENT_STREAM, "Cache-Control": "no-cache",
                                                   "X-Accel-Buffering": "no"})
            await response.prepare(request)
            try:
                await self._relay(engine, event, response, item, prompt, params, timeout)
            except ConnectionError:  # the client left mid-stream: leaving closes the engine connection
                log.info("request %s: its client disconnected mid-stream", meta.request_id)
            return response

    async def _relay(self, engine, event, response, item, prompt, params, timeout):
        """The engine's token events as SSE, from `event` (the first) to its answer."""
        model = self.model
        index, held = 0, None
        while event.get("event") == "token":
            index += 1
            if event["last"]:
                held = (index, model.token(event["token"]))  # goes out with generated_text
            else:
                await response.write(tgi.stream_event(index, model.token(event["token"])))
            event = await _next(engine, timeout)
        if event.get("ok"):
            sequence = results_of(event)[0][0]
            index, token = held or (index + 1, tgi.end_marker(model.tokenizer.eos_id))
            details = tgi.stream_details(sequence, len(item.ids)) if params.details else None
            await response.write(tgi.stream_event(index, token, (tgi.generated_text(prompt, sequence, params),
                                                                  details)))
        else:
            error = tgi.as_tgi_error(error_from_json(event))
            await response.write(tgi.sse({"error": error.message, "error_type": error.kind}))
        await response.write_eof()


async def _next(engine, timeout):
    """The next engine message; the engine's loss as an error message, not an exception (the
    stream has begun: it is told in an event)."""
    try:
        return await engine.receive(timeout)
    except ServingError as e:
        return {"ok": False, "status": e.status, "kind": e.kind, "message": e.message}


def _answer_timeout(message):
    return max(1.0, message["deadline"] - time.time()) + ANSWER_MARGIN


def failure(error, tgi_route=False):
    """A ServingError as a JSON answer: the package's statuses, or TGI's on its routes."""
    if tgi_route:
        error = tgi.as_tgi_error(error)
    if error.status == 503:  # shutting down, restarting, at capacity: the client is told to retry
        log.warning("request refused: %s", error.message)
    elif error.status >= 500:
        log.error("request failed: %s", error.message)
    return error_response(error.status, error.kind, error.message)


def error_response(status, kind, message, headers=None):
    error = ServingError(message)
    error.kind = kind
    return web.Response(status=status, reason=responses.get(status, "Error"), body=codec.error_body(error),
                        headers=dict({"Content-Type": codec.JSON}, **(headers or {})))


def json_response(value):
    return web.Response(body=codec.dumps(value), headers={"Content-Type": codec.JSON})


def too_large(length, max_body):
    return PayloadTooLarge(too_large_message(length, max_body))
