"""What the light workers and the engine process say to each other over the engine's unix socket.

One message is a 4-byte big-endian length and that many bytes of UTF-8 JSON. A connection
carries one exchange: the worker (or the native frontend) sends a request, the engine answers
it once. Requests:

- ``{"op": "generate", "id", "deadline", "items": [{"ids", "params"}], "stream"}`` ->
  ``{"ok": true, "results": [[sequence, ...] per item], "seconds"}`` or an error; `ids` are the
  prompt's token ids (the worker encoded and checked them), `params` the GenerationParameters
  fields, `deadline` the time.time() at which the engine stops decoding it (``time_limit``).
  With ``"stream": true`` the answer is preceded by one ``{"event": "token", "item", "row",
  "token": [id, text, logprob], "last"}`` per token a row accepts (`last`: it ended the row), sent as it is chosen. Closing the
  connection before the answer cancels the request;
- ``{"op": "cancel", "id"}``: the gateway saw the request's client hang up;
- ``{"op": "info"}``: the model's positions, the engine's limits, its pid;
- ``{"op": "stats"}``: the scheduler's counters (steps, rows per step, joins, ...).

Whether the engine is wedged is not asked here: ``serve``'s watchdog sends a real request
through the public address (serving.watchdog).

An error is ``{"ok": false, "status", "kind", "message"}``, a ServingError across the socket.
The socket lives in the server's private 0700 directory; JSON, not pickle, so a message
cannot run code even there. Nothing here imports MXNet.
"""
import json
import struct

from ..errors import ServingError
from ..generation.generator import Sequence, TokenInfo
from ..generation.params import GenerationParameters

HEADER = struct.Struct(">I")
MAX_MESSAGE = 256 * 1024 * 1024  # bytes; a whole request's answer with details fits many times over


class EngineUnavailable(ServingError):
    """The engine is not running, restarting, shutting down, or ended mid-request: retry."""

    status = 503
    kind = "engine_unavailable"


class ProtocolError(ConnectionError):
    """The other side sent something that is not a message, or hung up mid-message."""


def encode(message):
    """A message as the bytes that go on the socket (length header included)."""
    data = json.dumps(message, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
    return HEADER.pack(len(data)) + data


def decode(data):
    try:
        return json.loads(data.decode("utf-8"))
    except ValueError as e:
        raise ProtocolError("not a JSON message: {}".format(e))


def send(sock, message):
    sock.sendall(encode(message))


def receive(sock):
    """The next message, or None when the other side closed the connection before one began."""
    head = _read_exactly(sock, HEADER.size, allow_eof=True)
    if head is None:
        return None
    (size,) = HEADER.unpack(head)
    check_size(size)
    return decode(_read_exactly(sock, size))


def check_size(size):
    if size > MAX_MESSAGE:
        raise ProtocolError("message of {} bytes exceeds {}".format(size, MAX_MESSAGE))


def _read_exactly(sock, size, allow_eof=False):
    chunks, got = [], 0
    while got < size:
        chunk = sock.recv(min(size - got, 1 << 20))
        if not chunk:
            if allow_eof and got == 0:
                return None
            raise ProtocolError("connection closed mid-message ({} of {} bytes)".format(got, size))
        chunks.append(chunk)
        got += len(chunk)
    return b"".join(chunks)


# --- values ------------------------------------------------------------------------------------

def params_to_json(params):
    return params._asdict()


def params_from_json(value):
    """Parameters a worker already validated (so no second parse): the fields as sent."""
    fields = dict(value)
    fields["stop"] = tuple(fields.get("stop", ()))
    return GenerationParameters(**fields)


def sequence_to_json(sequence):
    value = sequence._asdict()
    if sequence.tokens is not None:
        value["tokens"] = [list(token) for token in sequence.tokens]
    return value


def sequence_from_json(value):
    fields = dict(value)
    if fields.get("tokens") is not None:
        fields["tokens"] = [TokenInfo(*token) for token in fields["tokens"]]
    return Sequence(**fields)


def error_to_json(error):
    return {"ok": False, "status": error.status, "kind": error.kind, "message": error.message}


def error_from_json(value):
    error = ServingError(str(value.get("message", "the engine failed")))
    error.status = int(value.get("status", 500))
    error.kind = str(value.get("kind", "engine_error"))
    return error
