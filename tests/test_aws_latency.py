"""The endpoint latency client: against a real HTTP server on loopback and a moto endpoint.

Durations come from an injected clock, so the statistics are checked exactly, without any
timing threshold.
"""
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import pytest
from aws_moto import aws, free_port, moto_server  # noqa: F401

from kogpt2_serving.aws.session import Clients
from kogpt2_serving.cli import main
from kogpt2_serving.aws.latency import (Report, Sample, endpoint_sender, format_report, measure, parse_response,
                                    percentile, url_sender)

PROMPT = "아기 공룡 둘리는 희동이와"


class ScriptedServer:
    """Answers POST /invocations with the next (status, body) of a script; records requests."""

    def __init__(self, script):
        self.script = list(script)
        self.requests = []
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers["Content-Length"]))
                server.requests.append((self.path, self.headers["Content-Type"], self.headers["Accept"], body))
                status, answer = server.script.pop(0)
                data = answer.encode("utf-8")
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args):
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", free_port()), Handler)
        self.url = "http://127.0.0.1:{}".format(self.httpd.server_address[1])
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def scripted():
    servers = []

    def start(script):
        servers.append(ScriptedServer(script))
        return servers[-1]
    yield start
    for server in servers:
        server.close()


def answer(tokens):
    return json.dumps([PROMPT + " 함께" * tokens, tokens, 0.1 * tokens], ensure_ascii=False)


def steps_clock(durations):
    """clock() for measure(): call i starts at t and its response arrives durations[i] later."""
    times = []
    t = 0.0
    for d in durations:
        times += [t, t + d]
        t += d + 100.0
    values = iter(times)
    return lambda: next(values)


def test_url_client_times_all_but_the_first_call_and_counts_errors(scripted):
    server = scripted([(200, answer(2)), (200, answer(4)), (500, '{"error": "model_error", "message": "boom"}'),
                       (200, answer(5)), (200, "not json"), (200, answer(10))])
    send = url_sender(server.url)
    report = measure(send, json.dumps(PROMPT).encode("utf-8"), 6, clock=steps_clock([9.0, 2.0, 0.5, 1.0, 0.1, 3.0]))
    assert [(s.seconds, s.tokens) for s in report.samples] == [(2.0, 4), (1.0, 5), (3.0, 10)]
    assert report.errors[0] == 'call 3: HTTP 500: {"error": "model_error", "message": "boom"}'
    assert report.errors[1].startswith("call 5: response is not JSON")
    assert len(report.errors) == 2
    path, content_type, accept, body = server.requests[0]
    assert (path, content_type, accept) == ("/invocations", "application/json", "application/json")
    assert json.loads(body.decode("utf-8")) == PROMPT
    lines = format_report(report, PROMPT)
    assert lines[1] == "calls: 6 (3 timed, first call excluded as warm-up), errors: 2"
    assert "seconds per request: mean 2.0000  p50 2.0000  p95 2.9000  (n=3)" in lines
    assert "generated tokens per request: mean 6.33" in lines
    assert "seconds per generated token: mean 0.3333  p50 0.3000  p95 0.4800  (n=3)" in lines


def test_cli_against_a_local_url(scripted, capsys):
    server = scripted([(200, answer(3))] * 3)
    assert main(["latency", "--url", server.url + "/", "--calls", "3", "--parameters", '{"max_new_tokens": 3}']) == 0
    out = capsys.readouterr().out
    assert "calls: 3 (2 timed, first call excluded as warm-up), errors: 0" in out
    assert "generated tokens per request: mean 3.00" in out
    assert json.loads(server.requests[0][3].decode("utf-8")) == {"inputs": PROMPT, "parameters": {"max_new_tokens": 3}}


def test_cli_fails_when_every_call_fails(capsys):
    port = free_port()  # nothing listens there
    assert main(["latency", "--url", "http://127.0.0.1:{}".format(port), "--calls", "2"]) == 1
    out = capsys.readouterr().out
    assert "errors: 2" in out
    assert "call 1: http://127.0.0.1:{}/invocations: [Errno 111] Connection refused".format(port) in out
    assert "seconds per request: n/a (no successful timed call)" in out


def test_endpoint_client_through_moto(aws):
    aws.queue_endpoint_results([answer(6)])  # moto repeats its answer for a repeated request
    send = endpoint_sender(Clients(), "kogpt2-serving")
    report = measure(send, json.dumps(PROMPT).encode("utf-8"), 3, clock=steps_clock([5.0, 1.5, 2.0]))
    assert report.errors == []
    assert [(s.seconds, s.tokens) for s in report.samples] == [(1.5, 6), (2.0, 6)]
    assert report.samples[0].text == PROMPT + " 함께" * 6


@pytest.mark.parametrize("values", [[1.0], [3.0, 1.0], [5.0, 1.0, 4.0, 2.0, 3.0], list(np.linspace(0.1, 7.3, 19))])
@pytest.mark.parametrize("q", [0, 50, 95, 100])
def test_percentile_matches_numpy(values, q):
    assert percentile(values, q) == pytest.approx(float(np.percentile(values, q)))


def test_response_shapes():
    assert parse_response(answer(2).encode("utf-8")) == (PROMPT + " 함께 함께", 2)
    hf = [{"generated_text": "x y", "details": {"generated_tokens": 7}}]
    assert parse_response(json.dumps(hf).encode()) == ("x y", 7)
    assert parse_response(b'[{"generated_text": "x"}]') == ("x", None)


def test_report_without_token_counts():
    report = Report(3, [Sample(1.0, None, "a"), Sample(2.0, None, "b")], [])
    assert format_report(report, "p")[-1] == "seconds per generated token: n/a (responses carry no token count)"
