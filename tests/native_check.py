"""The native frontend against a fake engine on a unix socket: no MXNet, no MMS.

`check_all()` runs every scenario and raises AssertionError on the first difference. It is run
by tests/test_native_compat.py in-process and, unchanged, by Python 3.6 (what the MXNet 1.6
images run) in a venv with aiohttp 3.8.6: `python native_check.py <src dir>` imports the
package from there and exits 0 when all pass. The real engine behind this frontend is tested
in test_native_frontend.py.
"""
import http.client
import json
import os
import socket
import socketserver
import sys
import tempfile
import threading
import time


class FakeEngine:
    """Speaks the engine protocol: `info`, and `generate` answered with the ids 10, 11, 12, ...
    one token every `delay` s when it streams; notes a request whose connection closed early."""

    def __init__(self, path, protocol, tokenizer, tokens=5, delay=0.0):
        self.path, self.protocol, self.tokenizer = path, protocol, tokenizer
        self.tokens, self.delay = tokens, delay
        self.requests, self.cancelled = [], []
        fake = self

        class Handler(socketserver.BaseRequestHandler):
            def handle(self):
                fake.handle(self.request)

        class Server(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
            daemon_threads = True

        self.server = Server(path, Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def handle(self, conn):
        message = self.protocol.receive(conn)
        if message["op"] == "info":
            self.protocol.send(conn, {"ok": True, "positions": 96, "pid": os.getpid()})
            return
        self.requests.append(message)
        ids = list(range(10, 10 + self.tokens))
        pieces = [self.tokenizer.decode([i]) for i in ids]
        try:
            if message.get("stream"):
                for n, (i, piece) in enumerate(zip(ids, pieces)):
                    time.sleep(self.delay)
                    self.protocol.send(conn, {"event": "token", "item": 0, "row": 0, "token": [i, piece, -0.5],
                                              "last": n == len(ids) - 1})
        except OSError:
            self.cancelled.append(message["id"])
            return
        sequence = {"text": "".join(pieces), "token_ids": ids, "finish_reason": "length", "generated_tokens": len(ids),
                    "seed": None, "tokens": [[i, p, -0.5] for i, p in zip(ids, pieces)],
                    "prompt_tokens": len(message["items"][0]["ids"])}
        try:
            self.protocol.send(conn, {"ok": True, "seconds": 0.01, "results": [[sequence]] * len(message["items"])})
        except OSError:
            self.cancelled.append(message["id"])

    def close(self):
        self.server.shutdown()
        self.server.server_close()


def request(port, method, path, body=b"", headers=None):
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        connection.request(method, path, body, headers or {"Content-Type": "application/json"})
        response = connection.getresponse()
        return response.status, dict((k.lower(), v) for k, v in response.getheaders()), response.read()
    finally:
        connection.close()


def sse(body):
    return [json.loads(line[len(b"data:"):].decode("utf-8")) for line in body.split(b"\n") if line.startswith(b"data:")]


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def check_all(native_frontend, engine_protocol, model_dir):
    run_dir = tempfile.mkdtemp(prefix="kgs-native-check-")
    frontend = fake = None
    try:
        from kogpt2_serving.files.loader import load_tokenizer
        from kogpt2_serving.files.model_dir import find_model_files

        tokenizer = load_tokenizer(find_model_files(model_dir))
        fake = FakeEngine(os.path.join(run_dir, "engine.sock"), engine_protocol, tokenizer)
        port = free_port()
        frontend = native_frontend.NativeFrontend("127.0.0.1", port, max_body=1000).start()
        assert request(port, "POST", "/invocations", b'"a"')[0] == 503  # no model yet
        frontend.attach(native_frontend.FrontendModel(model_dir, fake.path))
        text = "".join(tokenizer.decode([i]) for i in range(10, 15))
        _check_invocations(port, text, fake)
        _check_streams(port, text)
        _check_routes(port)
        _check_disconnect(port, fake)
        assert frontend.drain(1.0) and request(port, "POST", "/invocations", b'"a"')[0] == 503
    finally:
        if frontend is not None:
            frontend.stop()
        if fake is not None:
            fake.close()


def _check_invocations(port, text, fake):
    status, headers, body = request(port, "POST", "/invocations", b'{"inputs": "ab", "parameters": {"max_new_tokens": 5}}')
    assert (status, headers["content-type"], json.loads(body.decode("utf-8"))) == (
        200, "application/json", [{"generated_text": "ab" + text}]), body
    assert fake.requests[-1]["items"][0]["params"]["max_new_tokens"] == 5 and not fake.requests[-1].get("stream")
    status, _, body = request(port, "POST", "/invocations", b'"ab"')
    assert status == 200 and json.loads(body.decode("utf-8"))[:2] == ["ab" + text, 5]
    status, _, body = request(port, "POST", "/invocations", b'{"inputs": "ab", "parameters": {"top_p": 2}}')
    assert (status, json.loads(body.decode("utf-8"))["error_type"]) == (400, "invalid_parameter")


def _check_streams(port, text):
    status, headers, body = request(port, "POST", "/invocations", b'{"inputs": "ab", "stream": true}')
    events = sse(body)
    assert (status, headers["content-type"], [e["index"] for e in events]) == (200, "text/event-stream",
                                                                                [1, 2, 3, 4, 5])
    assert events[-1]["generated_text"] == "ab" + text and events[0]["generated_text"] is None
    status, _, body = request(port, "POST", "/generate_stream", b'{"inputs": "ab", "parameters": {"details": true}}')
    events = sse(body)
    assert events[-1]["generated_text"] == text and events[-1]["details"]["finish_reason"] == "length"
    status, _, body = request(port, "POST", "/generate", b'{"inputs": "ab", "parameters": {"max_new_tokens": 5}}')
    assert (status, json.loads(body.decode("utf-8"))) == (200, {"generated_text": text})
    status, _, body = request(port, "POST", "/generate", b'{"inputs": "ab", "parameters": {"best_of": 3}}')
    assert (status, json.loads(body.decode("utf-8"))["error_type"]) == (422, "validation")


def _check_routes(port):
    assert request(port, "GET", "/ping")[0] == 200 and request(port, "GET", "/health")[0] == 200
    status, _, body = request(port, "GET", "/info")
    assert status == 200 and json.loads(body.decode("utf-8"))["max_total_tokens"] == 96
    status, _, body = request(port, "GET", "/models")
    assert (status, json.loads(body.decode("utf-8"))["error_type"]) == (404, "not_found")
    status, headers, _ = request(port, "GET", "/invocations")
    assert (status, headers["allow"]) == (405, "POST")
    status, headers, body = request(port, "POST", "/invocations", b'"' + b"a" * 2000 + b'"')
    assert (status, json.loads(body.decode("utf-8"))["error_type"]) == (413, "payload_too_large")


def _check_disconnect(port, fake):
    """A client that leaves after the first event: the frontend closes its engine connection."""
    fake.tokens, fake.delay = 200, 0.02
    sock = socket.create_connection(("127.0.0.1", port), timeout=30)
    body = b'{"inputs": "ab", "parameters": {"max_new_tokens": 50}}'
    sock.sendall(b"POST /generate_stream HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                 b"Content-Length: %d\r\n\r\n%s" % (len(body), body))
    received = b""
    while b"data:" not in received:
        received += sock.recv(65536)
    sock.close()
    deadline = time.time() + 10
    while not fake.cancelled and time.time() < deadline:
        time.sleep(0.02)
    assert fake.cancelled == [fake.requests[-1]["id"]], fake.cancelled
    fake.tokens, fake.delay = 5, 0.0


if __name__ == "__main__":
    sys.path.insert(0, sys.argv[1])
    from kogpt2_serving.serving import engine_protocol, native_frontend  # noqa: E402

    check_all(native_frontend, engine_protocol, os.path.join(sys.argv[1], "kogpt2_serving", "demo_model"))
    print("native frontend checks passed on Python {}.{}".format(*sys.version_info[:2]))
