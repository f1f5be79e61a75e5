"""The public HTTP address of ``kogpt2-serving serve``: GET /ping and POST /invocations only.

Multi Model Server 1.1.11 cannot be told what its address answers. Configured as
sagemaker-inference configures it, one address serves inference *and* management, whose
``POST /models?url=...`` registers any directory (or URL) and runs its Python, and whose
``DELETE /models/model`` leaves ``/invocations`` answering 400 for good. Even on an address of
its own, inference also answers /predictions/*, /models/*/invoke and OPTIONS descriptions. Its
worker is never told the HTTP method (a GET with a body generates), and MMS's own failures
(worker died, response timeout, body too large, queue full) answer ``{"code", "type",
"message"}`` instead of this package's ``{"error", "error_type"}``.

So MMS listens only on unix sockets in the server's private (0700) directory, and this
gateway is what clients reach. It answers unknown routes (404) and methods (405 with
``Allow``) itself, refuses bodies over the payload limit before reading them (413), forwards
the rest to MMS over kept-alive unix-socket connections, and rewrites MMS's own error answers
into the package's schema, keeping their status. Nothing it is sent can reach management.

It also knows what MMS hides from its workers. Each ``/invocations`` it forwards carries
``X-Kogpt2-Request-Id`` and ``X-Kogpt2-Received`` (set here, replacing whatever a client sent),
so the engine can count a request's deadline from its arrival; a client that hangs up before
its answer is reported through ``on_client_gone(request_id)`` (``serve`` then cancels the
request in the engine, which stops spending steps on it). ``GET /ping`` is answered from
``health()`` (``serve``'s view of the engine and its watchdog), not by MMS, which says 200
whatever its state. ``drain()`` (SIGTERM) answers new requests 503 and waits for those in
flight.

It is a plain asyncio server (Python 3.6's asyncio has all it needs) running on a thread of
the ``serve`` process. HTTP/1.1 with keep-alive, Content-Length or chunked request bodies and
``Expect: 100-continue``; answers always carry a Content-Length.
"""
import asyncio
import json
import logging
import time
import uuid
from http.client import responses
from typing import List, NamedTuple, Optional, Tuple

from .listener import HEALTHY, Listener, too_large_message

log = logging.getLogger(__name__)

MAX_HEAD = 64 * 1024  # request line + headers
# After answering a request it will not read (413, 405, ...), the gateway discards what the
# client still sends, for a bounded time, before closing: a client that writes its whole body
# before reading (most do) would otherwise get a reset instead of the answer.
LINGER_SECONDS, LINGER_BYTES = 10.0, 64 * 1024 * 1024
ROUTES = {"/invocations": ("POST",), "/ping": ("GET", "HEAD")}
REQUEST_ID_HEADER = "X-Kogpt2-Request-Id"
RECEIVED_HEADER = "X-Kogpt2-Received"
HOP_BY_HOP = frozenset(("connection", "keep-alive", "proxy-connection", "transfer-encoding", "te", "trailer",
                        "upgrade", "host", "content-length", "expect"))
OWN_HEADERS = frozenset((REQUEST_ID_HEADER.lower(), RECEIVED_HEADER.lower()))  # a client's are dropped
# MMS's own error answers, by what its message says (else by status): (error_type, our message)
MMS_ERRORS = {
    "Worker died.": ("worker_died", "the worker handling this request died or did not answer within the response "
                                    "timeout; it is being restarted, retry the request"),
}
MMS_KINDS = {503: "service_unavailable", 507: "insufficient_memory", 408: "timeout", 404: "model_not_found"}
FALLBACK_KIND = "model_server_error"
# error_types the frontend (gateway or MMS) answers, never the handler: a readiness probe
# that gets one has not reached the model.
FRONTEND_KINDS = frozenset([kind for kind, _ in MMS_ERRORS.values()] + list(MMS_KINDS.values()) +
                           [FALLBACK_KIND, "server_unavailable", "shutting_down", "unhealthy"])

Headers = List[Tuple[str, str]]


class Answer(NamedTuple):
    status: int
    headers: Headers  # without Content-Length / Connection
    body: bytes


class HttpError(Exception):
    """A request the gateway answers itself (and then closes the connection)."""

    def __init__(self, status, kind, message, headers=()):
        super().__init__(message)
        self.answer = error_answer(status, kind, message, headers)


def error_answer(status, kind, message, headers=()):
    body = json.dumps({"error": message, "error_type": kind}, ensure_ascii=False).encode("utf-8")
    return Answer(status, [("Content-Type", "application/json")] + list(headers), body)


class Gateway(Listener):
    """Listens on (host, port) and forwards to MMS's inference unix socket at `backend_path`.

    `inference_path`: where MMS serves the model (/invocations, or /predictions/model for a
    model registered with a batch size). `max_body`: bytes (MMS's max_request_size).
    `timeout`: seconds to wait for MMS's answer before a 504 (MMS's own timeout is shorter).
    `health()`: None when healthy, else why not (then /ping answers 503 with it).
    `on_client_gone(request_id)`: called (on the gateway's thread: it must not block) when a
    client hangs up while its request is being answered.
    """

    def __init__(self, host, port, backend_socket, inference_path="/invocations", max_body=6 * 1024 * 1024,
                 timeout=3600.0, health=None, on_client_gone=None):
        super().__init__("gateway", health)
        self.host, self.port = host, port
        self.backend_socket = backend_socket
        self.inference_path = inference_path
        self.max_body = max_body
        self.timeout = timeout
        self.on_client_gone = on_client_gone
        self._server = None
        self._idle = []  # kept-alive (reader, writer) pairs to MMS

    async def _open(self):
        loop = asyncio.get_event_loop()
        self._server = await loop.create_server(lambda: _ClientProtocol(self._client, loop), self.host, self.port)

    def stop(self, timeout=10.0):
        super().stop(timeout)
        self._server = None

    async def _close(self):
        self._server.close()
        for _, writer in self._idle:
            writer.close()
        self._idle = []
        tasks = [t for t in _all_tasks() if t is not _current_task()]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await self._server.wait_closed()

    # --- one client connection ----------------------------------------------------------------

    async def _client(self, reader, writer):
        try:
            keep = True
            while keep:
                try:
                    request = await read_request(reader, writer, self.max_body)
                except HttpError as e:
                    await _send(writer, e.answer, keep=False)
                    await _linger(reader)
                    break
                if request is None:
                    break
                answer = await self._answer(request, reader)
                if answer is None:
                    break  # the client is gone
                keep = request.keep_alive and not self.draining
                await _send(writer, answer, keep, head_only=request.method == "HEAD")
        except (ConnectionError, asyncio.IncompleteReadError):
            pass  # the client went away
        except asyncio.CancelledError:
            pass
        except Exception:  # noqa: B902 -- a gateway bug must not take the listener down
            log.exception("gateway: unexpected error on a client connection")
        finally:
            writer.close()

    async def _answer(self, request, reader):
        """The answer to a routed request; None if its client hung up before it was ready."""
        if request.path == "/ping":
            problem = self.ping_problem()
            if problem:
                return error_answer(503, "unhealthy", problem)
            return Answer(200, [("Content-Type", "application/json")], HEALTHY)
        if self.draining:
            return error_answer(503, "shutting_down", "the server is shutting down; retry the request")
        request_id = uuid.uuid4().hex
        headers = [(k, v) for k, v in request.headers if k.lower() not in OWN_HEADERS]
        headers += [(REQUEST_ID_HEADER, request_id), (RECEIVED_HEADER, repr(time.time()))]
        self.in_flight += 1
        try:
            forward = asyncio.ensure_future(self._forward("POST", self.inference_path, headers, request.body))
            gone = asyncio.ensure_future(reader.client_gone.wait())
            try:
                await asyncio.wait([forward, gone], return_when=asyncio.FIRST_COMPLETED)
            finally:
                gone.cancel()
            if not forward.done():
                if self.on_client_gone is not None:
                    self.on_client_gone(request_id)
                await forward  # MMS's answer still comes; the connection to it stays in step
                return None
            return forward.result()
        finally:
            self.in_flight -= 1

    # --- MMS ------------------------------------------------------------------------------------

    async def _forward(self, method, path, headers, body):
        """Send one request to MMS and return its answer (MMS's errors in our schema)."""
        head = ["{} {} HTTP/1.1".format(method, path), "Host: localhost", "Content-Length: {}".format(len(body))]
        head += ["{}: {}".format(k, v) for k, v in headers if k.lower() not in HOP_BY_HOP]
        data = ("\r\n".join(head) + "\r\n\r\n").encode("latin-1") + body
        for attempt in (0, 1):
            reused = bool(self._idle)
            try:
                reader, writer = self._idle.pop() if reused else await asyncio.open_unix_connection(
                    self.backend_socket, limit=MAX_HEAD)
            except OSError:
                return error_answer(503, "server_unavailable", "the model server is not running")
            try:
                writer.write(data)
                answer, keep = await asyncio.wait_for(read_response(reader, method), self.timeout)
            except asyncio.TimeoutError:
                writer.close()
                return error_answer(504, "timeout", "the model server did not answer within {:.0f} s".format(
                    self.timeout))
            except (ConnectionError, asyncio.IncompleteReadError, ValueError) as e:
                writer.close()
                if reused and attempt == 0 and _nothing_read(e):
                    continue  # a kept-alive connection MMS had closed: once more on a new one
                log.warning("gateway: the model server's answer was cut off (%s)", e)
                return error_answer(503, "server_unavailable", "the model server closed the connection "
                                                               "before answering")
            if keep:
                self._idle.append((reader, writer))
            else:
                writer.close()
            return reshape_error(answer)
        raise AssertionError("unreachable")


class _ClientProtocol(asyncio.StreamReaderProtocol):
    """asyncio.start_server's protocol, plus `reader.client_gone` (an Event set when the client
    closes its end or the connection drops), so a request waiting for MMS learns at once, without
    polling, that nobody will read its answer."""

    def __init__(self, client_connected, loop):
        reader = asyncio.StreamReader(limit=MAX_HEAD, loop=loop)
        reader.client_gone = asyncio.Event()
        super().__init__(reader, client_connected, loop=loop)
        self._gone = reader.client_gone

    def eof_received(self):
        self._gone.set()
        return super().eof_received()

    def connection_lost(self, exc):
        self._gone.set()
        super().connection_lost(exc)


# --- HTTP/1.1 parsing ----------------------------------------------------------------------------

class Request(NamedTuple):
    method: str
    path: str
    headers: Headers
    body: bytes
    keep_alive: bool


async def read_request(reader, writer, max_body) -> Optional[Request]:
    """The next request on a client connection (None when the client closed it cleanly).
    Route and method are checked before the body is read; problems raise HttpError."""
    try:
        head = await reader.readuntil(b"\r\n\r\n")
    except asyncio.IncompleteReadError as e:
        if not e.partial.strip():
            return None
        raise HttpError(400, "bad_request", "incomplete HTTP request head")
    except asyncio.LimitOverrunError:
        raise HttpError(431, "bad_request", "request headers exceed {} bytes".format(MAX_HEAD))
    method, target, version, headers = _parse_head(head)
    path = target.split("?", 1)[0]  # a query string (e.g. MMS's model_name) is never passed on
    if path not in ROUTES:
        raise HttpError(404, "not_found", "no route {}; this server answers POST /invocations and GET /ping".format(
            _printable(path)))
    if method not in ROUTES[path]:  # answered without reading a body it does not want
        allowed = ", ".join(ROUTES[path])
        raise HttpError(405, "method_not_allowed", "{} {} is not supported; use {}".format(
            _printable(method), path, allowed), [("Allow", allowed)])
    fields = _fields(headers)
    body = await _read_body(reader, writer, fields, max_body)
    connection = _joined(fields, "connection")
    keep = "close" not in connection and (version == "HTTP/1.1" or "keep-alive" in connection)
    return Request(method, path, headers, body, keep)


def _parse_head(head):
    lines = head.decode("latin-1").split("\r\n")
    parts = lines[0].split(" ")
    if len(parts) != 3 or not parts[2].startswith("HTTP/"):
        raise HttpError(400, "bad_request", "malformed request line")
    method, target, version = parts
    if version not in ("HTTP/1.0", "HTTP/1.1"):
        raise HttpError(505, "bad_request", "HTTP version {} is not supported".format(_printable(version)))
    headers = []
    for line in lines[1:]:
        if not line:
            continue
        name, sep, value = line.partition(":")
        if not sep or not name or name != name.strip():
            raise HttpError(400, "bad_request", "malformed header line")
        headers.append((name, value.strip()))
    return method, target, version, headers


async def _read_body(reader, writer, fields, max_body):
    lengths = set(fields.get("content-length", []))
    chunked = _joined(fields, "transfer-encoding")
    if chunked and chunked != "chunked":
        raise HttpError(501, "bad_request", "transfer-encoding {!r} is not supported".format(_printable(chunked)))
    if chunked and lengths:
        raise HttpError(400, "bad_request", "a request cannot have both Content-Length and Transfer-Encoding")
    if len(lengths) > 1 or (lengths and not next(iter(lengths)).isdecimal()):
        raise HttpError(400, "bad_request", "invalid Content-Length")
    length = int(next(iter(lengths))) if lengths else 0
    if length > max_body:
        raise _too_large(length, max_body)
    if "100-continue" in _joined(fields, "expect"):
        writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
    if chunked:
        return await _read_chunks(reader, max_body)
    return await reader.readexactly(length)


async def _read_chunks(reader, max_body):
    body = bytearray()
    while True:
        line = await reader.readuntil(b"\r\n")
        size = line.split(b";", 1)[0].strip()
        try:
            size = int(size, 16)
        except ValueError:
            raise HttpError(400, "bad_request", "malformed chunk size")
        if size == 0:
            while (await reader.readuntil(b"\r\n")) != b"\r\n":  # trailers, ignored
                pass
            return bytes(body)
        if len(body) + size > max_body:
            raise _too_large(len(body) + size, max_body)
        body += await reader.readexactly(size)
        if await reader.readexactly(2) != b"\r\n":
            raise HttpError(400, "bad_request", "malformed chunk")


async def read_response(reader, method="POST") -> Tuple[Answer, bool]:
    """MMS's answer -> (Answer, whether the connection can be reused)."""
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    version, _, rest = lines[0].partition(" ")
    status = int(rest.split(" ", 1)[0])
    received = [(name.strip(), value.strip()) for name, sep, value in (line.partition(":") for line in lines[1:]) if sep]
    fields = _fields(received)
    headers = [(name, value) for name, value in received if name.lower() not in HOP_BY_HOP]
    keep = "close" not in _joined(fields, "connection") and version == "HTTP/1.1"
    if method == "HEAD" or status in (204, 304) or 100 <= status < 200:
        body = b""
    elif _joined(fields, "transfer-encoding") == "chunked":
        body = await _read_chunks(reader, float("inf"))
    elif "content-length" in fields:
        body = await reader.readexactly(int(fields["content-length"][-1]))
    else:
        body, keep = await reader.read(), False
    return Answer(status, headers, body), keep


def _fields(headers):
    """{lower-case name: [values, in order]} of (name, value) header pairs."""
    fields = {}
    for name, value in headers:
        fields.setdefault(name.lower(), []).append(value)
    return fields


def _joined(fields, name):
    """A header's values as one lower-case string ('' when absent)."""
    return ",".join(fields.get(name, [])).lower()


def reshape_error(answer):
    """MMS's own {"code", "type", "message"} error answers in the package's schema, same status;
    answers of our handler ({"error", "error_type"}) and successes pass unchanged."""
    if answer.status < 400:
        return answer
    try:
        value = json.loads(answer.body.decode("utf-8"))
    except ValueError:
        value = None
    if isinstance(value, dict) and "error_type" in value:
        return answer
    message = value.get("message") if isinstance(value, dict) else None
    kind, text = MMS_ERRORS.get(message, (MMS_KINDS.get(answer.status, FALLBACK_KIND), None))
    if text is None:
        text = "the model server answered {} {}: {}".format(
            answer.status, responses.get(answer.status, ""), _printable(message or "(no message)"))
    log.warning("gateway: the model server answered %d (%s)", answer.status, message)
    return error_answer(answer.status, kind, text)


async def _send(writer, answer, keep, head_only=False):
    reason = responses.get(answer.status, "Unknown")
    head = ["HTTP/1.1 {} {}".format(answer.status, reason)]
    head += ["{}: {}".format(k, v) for k, v in answer.headers]
    head += ["Content-Length: {}".format(len(answer.body)), "Connection: {}".format("keep-alive" if keep else "close")]
    writer.write(("\r\n".join(head) + "\r\n\r\n").encode("latin-1") + (b"" if head_only else answer.body))
    await writer.drain()


async def _linger(reader):
    loop = asyncio.get_event_loop()
    deadline, discarded = loop.time() + LINGER_SECONDS, 0
    while discarded < LINGER_BYTES and loop.time() < deadline:
        try:
            chunk = await asyncio.wait_for(reader.read(65536), deadline - loop.time())
        except (asyncio.TimeoutError, ConnectionError):
            return
        if not chunk:
            return
        discarded += len(chunk)


def _too_large(length, max_body):
    return HttpError(413, "payload_too_large", too_large_message(length, max_body))


def _all_tasks():
    """asyncio.all_tasks() (3.7+) or Task.all_tasks() (3.6, removed in 3.9)."""
    if hasattr(asyncio, "all_tasks"):
        return asyncio.all_tasks()  # novermin (guarded: 3.7+)
    return asyncio.Task.all_tasks()


def _current_task():
    if hasattr(asyncio, "current_task"):
        return asyncio.current_task()  # novermin (guarded: 3.7+)
    return asyncio.Task.current_task()


def _nothing_read(error):
    return not isinstance(error, asyncio.IncompleteReadError) or not error.partial


def _printable(text):
    text = str(text).encode("ascii", "backslashreplace").decode("ascii")
    return text if len(text) <= 60 else text[:57] + "..."
