"""The gateway against a fake Multi Model Server on a unix socket, stdlib only.

`check_all()` runs every scenario and raises AssertionError on the first difference. It is
run by tests/test_gateway.py in-process and, unchanged, by the oldest Python the machine has
(3.6 is what the MXNet 1.6 images run): `python gateway_check.py <src dir>` imports the
package from there and exits 0 when all pass.
"""
import http.client
import http.server
import json
import os
import socket
import socketserver
import sys
import tempfile
import threading
import time


class FakeMMS:
    """Answers POST/GET over HTTP/1.1 on a unix socket; records requests and connections."""

    def __init__(self, path):
        self.path = path
        self.requests = []  # (method, path, headers dict, body)
        self.connections = 0
        self.sockets = []
        self.close_after_answer = False  # claim keep-alive, then close (a stale pooled connection)
        fake = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def setup(self):
                fake.connections += 1
                fake.sockets.append(self.request)
                super().setup()

            def do_POST(self):
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                fake.requests.append((self.command, self.path, dict(self.headers), body))
                status, answer = fake.answer(body)
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(answer)))
                self.end_headers()
                self.wfile.write(answer)
                if fake.close_after_answer:
                    self.close_connection = True

            do_GET = do_POST

            def log_message(self, *args):
                pass

            def handle(self):
                try:
                    super().handle()
                except (BrokenPipeError, ConnectionResetError):  # the gateway gave up on a slow answer
                    pass

        class Server(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
            daemon_threads = True

        self.server = Server(path, Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def answer(self, body):
        if body.startswith(b"sleep "):
            time.sleep(float(body[6:]))
        if body == b"mms error":
            return 503, json.dumps({"code": 503, "type": "ServiceUnavailableException",
                                    "message": "No worker is available to serve request for model: model."}).encode()
        if body == b"worker died":
            return 500, json.dumps({"code": 500, "type": "InternalServerException", "message": "Worker died."}).encode()
        if body == b"ours":
            return 400, json.dumps({"error": "bad", "error_type": "bad_request"}).encode()
        if body == b"not json":
            return 502, b"<html>bad gateway</html>"
        return 200, b"echo:" + body

    def close(self):
        """Stop as a dead MMS does: no listener and every open connection closed."""
        self.server.shutdown()
        self.server.server_close()
        for sock in self.sockets:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def post(port, path, body, headers=None, method="POST", connection=None):
    conn = connection or http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    conn.request(method, path, body, headers or {})
    response = conn.getresponse()
    result = response.status, dict((k.lower(), v) for k, v in response.getheaders()), response.read()
    if connection is None:
        conn.close()
    return result


def check_all(gateway_module):
    Gateway = gateway_module.Gateway
    run_dir = tempfile.mkdtemp(prefix="gw-")
    socket_path = os.path.join(run_dir, "inference.sock")
    fake = FakeMMS(socket_path)
    port = free_port()
    problems, gone = [None], []
    gateway = Gateway("127.0.0.1", port, socket_path, "/predictions/model", max_body=1000, timeout=1.5,
                      health=lambda: problems[0], on_client_gone=gone.append).start()
    try:
        # Forwarded to MMS's model path; query string, hop-by-hop headers and Host are not passed on.
        status, headers, body = post(port, "/invocations?model_name=evil", b"hello", {
            "Content-Type": "application/json", "Accept": "text/plain", "X-Amzn-SageMaker-Custom-Attributes": "a=1",
            "Connection": "keep-alive", "Keep-Alive": "timeout=5", "Proxy-Connection": "x", "Upgrade": "h2c"})
        assert (status, body, headers["content-length"]) == (200, b"echo:hello", "10"), (status, body)
        method, path, sent, received = fake.requests[-1]
        assert (method, path, received) == ("POST", "/predictions/model", b"hello"), fake.requests[-1]
        assert (sent["Content-Type"], sent["Accept"], sent["X-Amzn-SageMaker-Custom-Attributes"]) == (
            "application/json", "text/plain", "a=1")
        assert not {"Keep-Alive", "Proxy-Connection", "Upgrade"} & set(sent) and sent["Host"] == "localhost", sent
        # Each request gets an id and its arrival time, set by the gateway whatever a client sent.
        before = time.time()
        post(port, "/invocations", b"x", {"X-Kogpt2-Request-Id": "forged", "X-Kogpt2-Received": "1"})
        sent = fake.requests[-1][2]
        assert len(sent["X-Kogpt2-Request-Id"]) == 32 and sent["X-Kogpt2-Request-Id"] != "forged", sent
        assert before <= float(sent["X-Kogpt2-Received"]) <= time.time(), sent
        post(port, "/invocations", b"y")
        assert fake.requests[-1][2]["X-Kogpt2-Request-Id"] != sent["X-Kogpt2-Request-Id"]

        # /ping is answered from health(), not by MMS (which says 200 whatever its state); HEAD: headers only.
        asked = len(fake.requests)
        assert post(port, "/ping", None, method="GET")[::2] == (200, b'{"status": "Healthy"}\n')
        status, headers, body = post(port, "/ping", None, method="HEAD")
        assert (status, body, headers["content-length"]) == (200, b"", "22")
        problems[0] = "the engine process is restarting"
        status, _, body = post(port, "/ping", None, method="GET")
        assert (status, json.loads(body.decode())) == (503, {"error": "the engine process is restarting",
                                                             "error_type": "unhealthy"})
        problems[0] = None
        assert len(fake.requests) == asked  # MMS was never asked

        # A client that hangs up while its request is answered: reported with the request's id.
        sock = socket.create_connection(("127.0.0.1", port), timeout=5)
        sock.sendall(b"POST /invocations HTTP/1.1\r\nHost: x\r\nContent-Length: 9\r\n\r\nsleep 0.6")
        time.sleep(0.3)
        sock.close()
        time.sleep(0.4)
        assert gone == [fake.requests[-1][2]["X-Kogpt2-Request-Id"]], (gone, fake.requests[-1])
        time.sleep(0.3)
        assert post(port, "/invocations", b"after")[2] == b"echo:after"  # the MMS connection stayed in step

        # Kept-alive connections to MMS are reused: 5 requests in a row open no new one.
        before = fake.connections
        for i in range(5):
            assert post(port, "/invocations", str(i).encode())[2] == "echo:{}".format(i).encode()
        assert fake.connections == before, (before, fake.connections)
        # A pooled connection MMS closed meanwhile: retried once on a new one, the client sees nothing.
        fake.close_after_answer = True
        assert post(port, "/invocations", b"a")[2] == b"echo:a"
        fake.close_after_answer = False
        time.sleep(0.2)
        assert post(port, "/invocations", b"b")[2] == b"echo:b"

        # MMS's own errors in our schema, status kept; our handler's errors pass unchanged.
        assert post(port, "/invocations", b"mms error")[::2] == (503, json.dumps({
            "error": "the model server answered 503 Service Unavailable: No worker is available to serve request "
                     "for model: model.", "error_type": "service_unavailable"}).encode())
        status, _, body = post(port, "/invocations", b"worker died")
        assert (status, json.loads(body.decode())["error_type"]) == (500, "worker_died")
        assert post(port, "/invocations", b"ours")[::2] == (400, b'{"error": "bad", "error_type": "bad_request"}')
        status, _, body = post(port, "/invocations", b"not json")
        assert (status, json.loads(body.decode())) == (502, {
            "error": "the model server answered 502 Bad Gateway: (no message)", "error_type": "model_server_error"})

        # Slower than the timeout: 504, and the gateway keeps serving.
        status, _, body = post(port, "/invocations", b"sleep 3")
        assert (status, json.loads(body.decode())) == (504, {
            "error": "the model server did not answer within 2 s", "error_type": "timeout"}), body
        assert post(port, "/invocations", b"c")[2] == b"echo:c"

        # Over max_body: 413 before the body is read, then the connection closes.
        status, headers, body = post(port, "/invocations", b"x" * 1001)
        assert (status, headers["connection"], json.loads(body.decode())["error_type"]) == (
            413, "close", "payload_too_large")
        assert post(port, "/invocations", b"x" * 1000)[0] == 200  # exactly the limit

        # Draining (SIGTERM): a request in flight finishes, new ones get 503, /ping says 503.
        results = []
        slow = threading.Thread(target=lambda: results.append(post(port, "/invocations", b"sleep 0.5")))
        slow.start()
        time.sleep(0.2)
        assert gateway.in_flight == 1
        started = time.time()
        drained = [None]
        drainer = threading.Thread(target=lambda: drained.__setitem__(0, gateway.drain(5)))
        drainer.start()
        time.sleep(0.05)
        status, headers, body = post(port, "/invocations", b"late")
        assert (status, json.loads(body.decode())["error_type"]) == (503, "shutting_down"), body
        assert post(port, "/ping", None, method="GET")[0] == 503
        drainer.join()
        slow.join()
        assert drained[0] is True and time.time() - started < 2
        assert results[0][::2] == (200, b"echo:sleep 0.5")
        gateway.draining = False

        # MMS gone: 503 in our schema, not a hang or a reset.
        fake.close()
        os.unlink(socket_path)
        status, _, body = post(port, "/invocations", b"d")
        assert (status, json.loads(body.decode())) == (503, {
            "error": "the model server is not running", "error_type": "server_unavailable"}), body
    finally:
        gateway.stop()
    # Stopped: nothing listens any more.
    try:
        socket.create_connection(("127.0.0.1", port), timeout=2).close()
    except OSError:
        pass
    else:
        raise AssertionError("the gateway still listens after stop()")


if __name__ == "__main__":
    sys.path.insert(0, sys.argv[1])  # the package's src/: the gateway needs nothing outside the stdlib
    from kogpt2_serving.serving import gateway

    check_all(gateway)
    print("gateway checks passed on Python {}.{}".format(*sys.version_info[:2]))
