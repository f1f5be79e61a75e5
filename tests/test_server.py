"""`kogpt2-serving serve` for real on a tiny model, over loopback HTTP, once per frontend: Multi
Model Server + our handler service (`mms`), and the native aiohttp frontend (`native`). Every
request and bad input gets the same status and body from both. One server per frontend for
the whole module; it must stop on SIGTERM leaving no process behind (checked when the fixture
ends)."""
import http.client
import json
import re
import socket
import threading

import pytest

from kogpt2_serving.generation.params import GenerationParameters
from server_utils import ServeProcess

DEFAULTS = GenerationParameters()


@pytest.fixture(scope="module", params=["mms", "native"])
def server(request, tiny_model_dir):
    with ServeProcess(tiny_model_dir, ["--frontend", request.param]) as running:
        running.frontend = request.param
        yield running


@pytest.fixture(scope="module")
def workers_at_start(server):
    return server.workers() if server.frontend == "mms" else []


def expected(generator, prompt, **params):
    """The in-process generator's sequences for one prompt alone."""
    return generator.generate([prompt], DEFAULTS._replace(**params))[0]


def test_serve_reports_readiness_with_an_engine_and_its_frontend(server, workers_at_start):
    log = server.log_text(cli_only=True)
    if server.frontend == "mms":
        assert "using 32 light worker(s)" in log
        assert "32 worker(s), light: generation runs in the engine process (pid {})".format(server.engine_pid) in log
        assert [status for _, _, status in workers_at_start] == ["READY"] * 32
    else:
        assert "native frontend on http://127.0.0.1:{}".format(server.port) in log
        assert "generation in the engine process (pid {})".format(server.engine_pid) in log
        assert "Multi Model Server" not in log and "light worker" not in log
    assert "engine ready on" in server.log_text()
    assert re.search(r"serving .* at http://127\.0\.0\.1:{} ".format(server.port), log)
    assert server.request("GET", "/ping")[0] == 200


@pytest.mark.parametrize("body", [
    '"\\uc544\\uae30 \\uacf5\\ub8e1 \\ub458\\ub9ac\\ub294"'.encode("ascii"),  # MXNetPredictor.predict: escaped
    '"아기 공룡 둘리는"'.encode("utf-8"),  # raw UTF-8 JSON string
])
def test_sdk_json_string_gets_the_walkthrough_list(server, generator, body):
    status, reason, headers, raw = server.post(body, "application/json", "application/json")
    sentence, tokens, seconds = json.loads(raw.decode("utf-8"))
    want = expected(generator, "아기 공룡 둘리는")[0]
    assert (status, headers["content-type"]) == (200, "application/json")
    assert (sentence, tokens) == ("아기 공룡 둘리는" + want.text, want.generated_tokens)
    assert isinstance(seconds, float) and seconds > 0
    assert "아기 공룡".encode("utf-8") in raw  # Korean is not \u-escaped


def test_hf_single_and_batch_inputs(server, generator):
    params = {"max_new_tokens": 6, "do_sample": True, "seed": 11, "top_k": 20}
    status, single = server.post_json({"inputs": "오늘은 날씨가", "parameters": params})
    assert status == 200
    assert single == [{"generated_text": "오늘은 날씨가" + expected(generator, "오늘은 날씨가", **params)[0].text}]
    prompts = ["대한민국은", "학생들은", "서울에서"]
    status, batch = server.post_json({"inputs": prompts, "parameters": dict(params, return_full_text=False)})
    assert status == 200
    assert batch == [{"generated_text": expected(generator, p, **params)[0].text} for p in prompts]


def test_details_and_several_sequences_per_input(server, generator):
    params = {"max_new_tokens": 5, "do_sample": True, "seed": 5, "num_return_sequences": 2, "details": True}
    status, answer = server.post_json({"inputs": ["컴퓨터와", "학생들은"], "parameters": params})
    assert status == 200
    want = [s for p in ("컴퓨터와", "학생들은") for s in expected(generator, p, **params)]
    assert [a["generated_text"] for a in answer] == [p + s.text for p, s in zip(
        ["컴퓨터와", "컴퓨터와", "학생들은", "학생들은"], want)]
    for entry, sequence in zip(answer, want):
        details = entry["details"]
        assert (details["finish_reason"], details["generated_tokens"], details["seed"]) == (
            sequence.finish_reason, sequence.generated_tokens, 5)
        assert [(t["id"], t["text"]) for t in details["tokens"]] == [(t.id, t.text) for t in sequence.tokens]
        assert [t["logprob"] for t in details["tokens"]] == pytest.approx([t.logprob for t in sequence.tokens],
                                                                          abs=1e-4)


def test_text_plain_in_and_out(server, generator):
    status, _, headers, body = server.post("서울에서 부산까지".encode("utf-8"), "text/plain", "text/plain")
    assert (status, headers["content-type"]) == (200, "text/plain; charset=utf-8")
    assert body.decode("utf-8") == "서울에서 부산까지" + expected(generator, "서울에서 부산까지")[0].text


def test_jsonlines_one_answer_per_line_in_order(server, generator):
    lines = ['"하나"', json.dumps({"inputs": "둘", "parameters": {"max_new_tokens": 3}}, ensure_ascii=False),
             json.dumps({"inputs": ["셋", "넷"], "parameters": {"max_new_tokens": 2}}, ensure_ascii=False)]
    status, _, headers, body = server.post("\n".join(lines) + "\n", "application/jsonlines", "application/jsonlines")
    answers = [json.loads(line) for line in body.decode("utf-8").splitlines()]
    assert (status, headers["content-type"], len(answers)) == (200, "application/jsonlines", 3)
    assert answers[0][:2] == ["하나" + expected(generator, "하나")[0].text, expected(generator, "하나")[0].generated_tokens]
    assert answers[1] == [{"generated_text": "둘" + expected(generator, "둘", max_new_tokens=3)[0].text}]
    assert answers[2] == [{"generated_text": p + expected(generator, p, max_new_tokens=2)[0].text} for p in ("셋", "넷")]


def test_missing_or_wildcard_accept_answers_json(server):
    for accept in (None, "*/*"):
        status, _, headers, body = server.post('{"inputs": "a", "parameters": {"max_new_tokens": 1}}',
                                               "application/json", accept)
        assert (status, headers["content-type"]) == (200, "application/json")
        assert json.loads(body.decode("utf-8"))[0]["generated_text"].startswith("a")


GOOD = json.dumps({"inputs": "좋은 요청", "parameters": {"max_new_tokens": 2}}, ensure_ascii=False)
LONG_PROMPT = "가나다라 " * 200_000  # 1 MB of text: far beyond 96 positions, well under the MMS body limit

BAD = [  # (name, body, content type, accept, status, error_type, text in the message)
    ("invalid JSON", b'{"inputs": ', "application/json", None, 400, "bad_request", "not valid JSON"),
    ("empty body", b"", "application/json", None, 400, "bad_request", "not valid JSON"),
    ("JSON number", b"42", "application/json", None, 400, "bad_request", "got a number"),
    ("inputs not a string", b'{"inputs": {"a": 1}}', "application/json", None, 400, "invalid_parameter",
     "inputs must be a string or a non-empty list of strings, got an object"),
    ("missing inputs", b'{"parameters": {}}', "application/json", None, 400, "invalid_parameter", '"inputs"'),
    ("unknown field", b'{"inputs": "a", "options": {}}', "application/json", None, 400, "bad_request",
     "unknown field 'options'"),
    ("stream true", b'{"inputs": "a", "stream": true}', "application/json", None, 400, "invalid_parameter",
     'streaming is not supported by this server'),
    ("stream not a boolean", b'{"inputs": "a", "stream": "yes"}', "application/json", None, 400,
     "invalid_parameter", "stream must be true or false, got a string"),
    ("10,000-deep arrays", b"[" * 10000 + b"]" * 10000, "application/json", None, 400, "bad_request",
     "body nests JSON arrays or objects deeper than 16 levels"),
    ("10,000-deep objects", b'{"a":' * 10000 + b"1" + b"}" * 10000, "application/json", None, 400, "bad_request",
     "body nests JSON arrays or objects deeper than 16 levels"),
    ("deep jsonlines line", b'"a"\n' + b"[" * 5000 + b"]" * 5000, "application/jsonlines", None, 400, "bad_request",
     "line 2 nests JSON arrays or objects deeper than 16 levels"),
    ("lone surrogate in the prompt", b'{"inputs": "abc\\ud800"}', "application/json", None, 400, "invalid_parameter",
     "inputs is not valid Unicode text: a lone surrogate \\ud800 at character 3"),
    ("lone surrogate in a stop string", b'{"inputs": "a", "parameters": {"stop": ["\\udc00"]}}', "application/json",
     None, 400, "invalid_parameter", "stop[0] is not valid Unicode text: a lone surrogate \\udc00"),
    ("charset rot13", b'"a"', "application/json; charset=rot13", None, 415, "unsupported_content_type",
     "charset 'rot13' is not a text encoding"),
    ("charset base64", b'"a"', "application/json; charset=base64", None, 415, "unsupported_content_type",
     "charset 'base64' is not a text encoding"),
    ("charset zip", b'"a"', "text/plain; charset=zip", None, 415, "unsupported_content_type",
     "charset 'zip' is not a text encoding"),
    ("charset punycode", b'"a"', "application/json; charset=punycode", None, 415, "unsupported_content_type",
     "charset 'punycode' is not a text encoding"),
    ("over the request budget", json.dumps({"inputs": ["a"] * 64, "parameters": {
        "do_sample": True, "num_return_sequences": 16, "max_new_tokens": 32}}).encode(), "application/json", None,
     400, "request_too_large", "needs 1024 decode rows and 32768 new tokens over 64 prompt(s)"),
    ("unknown parameter", b'{"inputs": "a", "parameters": {"max_tokens": 5}}', "application/json", None, 400,
     "invalid_parameter", "unknown parameter 'max_tokens'"),
    ("parameters not an object", b'{"inputs": "a", "parameters": [1]}', "application/json", None, 400,
     "invalid_parameter", "parameters must be a JSON object, got array"),
    ("wrong parameter type", b'{"inputs": "a", "parameters": {"max_new_tokens": "5"}}', "application/json", None,
     400, "invalid_parameter", "max_new_tokens must be an integer, got '5'"),
    ("temperature out of range", b'{"inputs": "a", "parameters": {"temperature": -1}}', "application/json", None,
     400, "invalid_parameter", "temperature must be a finite number > 0, got -1.0"),
    ("top_p out of range", b'{"inputs": "a", "parameters": {"top_p": 1.5}}', "application/json", None, 400,
     "invalid_parameter", "top_p must be in (0, 1], got 1.5"),
    ("max_new_tokens out of range", b'{"inputs": "a", "parameters": {"max_new_tokens": 0}}', "application/json",
     None, 400, "invalid_parameter", "max_new_tokens must be in [1, 1024], got 0"),
    ("conflicting parameters", b'{"inputs": "a", "parameters": {"num_return_sequences": 2}}', "application/json",
     None, 400, "invalid_parameter", "num_return_sequences > 1 needs do_sample=true"),
    ("NaN", b'{"inputs": "a", "parameters": {"temperature": NaN}}', "application/json", None, 400, "bad_request",
     "NaN is not a JSON number"),
    ("empty prompt", b'""', "application/json", None, 400, "invalid_parameter", "must be a non-empty prompt"),
    ("whitespace prompt", b" \n ", "text/plain", None, 400, "invalid_parameter", "must be a non-empty prompt"),
    ("prompt too long", json.dumps({"inputs": "가나다 " * 40, "parameters": {"max_new_tokens": 60}}).encode(),
     "application/json", None, 413, "prompt_too_long", "exceeds the model's 96 positions"),
    ("huge body", LONG_PROMPT.encode("utf-8"), "text/plain", None, 413, "prompt_too_long",
     "exceeds the model's 96 positions"),
    ("too many prompts", json.dumps({"inputs": ["a"] * 65}).encode(), "application/json", None, 400, "bad_request",
     "at most 64 prompts"),
    ("invalid UTF-8 JSON", b'"\xff\xfe"', "application/json", None, 400, "bad_request", "not valid utf-8"),
    ("invalid UTF-8 text", b"\xed\xa0\x80", "text/plain; charset=utf-8", None, 400, "bad_request", "not valid utf-8"),
    ("bad jsonlines line", b'"a"\n{"inputs": 1}\n', "application/jsonlines", None, 400, "invalid_parameter",
     "line 2: inputs must be"),
    ("unsupported content type", b"a,b", "text/csv", None, 415, "unsupported_content_type",
     "unsupported content type 'text/csv'"),
    ("unsupported charset", b"a", "text/plain; charset=x-unknown", None, 415, "unsupported_content_type",
     "unsupported charset 'x-unknown'"),
    ("unsupported accept", b'"a"', "application/json", "image/png", 406, "unsupported_accept",
     "cannot answer with 'image/png'"),
    ("text/plain accept for two texts", b'{"inputs": ["a", "b"]}', "application/json", "text/plain", 406,
     "unsupported_accept", "exactly one generated text"),
    ("Korean in the error message", '{"inputs": "a", "parameters": {"max_new_tokens": "다섯"}}'.encode("utf-8"),
     "application/json", None, 400, "invalid_parameter", "max_new_tokens must be an integer, got '다섯'"),
]


@pytest.mark.parametrize("name, body, content_type, accept, status, error_type, text", BAD, ids=[b[0] for b in BAD])
def test_bad_input_gets_its_status_and_a_json_error_and_the_worker_survives(
        server, name, body, content_type, accept, status, error_type, text):
    got_status, reason, headers, raw = server.post(body, content_type, accept)
    if name == "stream true" and server.frontend == "native":  # the one difference: native streams it
        assert (got_status, headers["content-type"]) == (200, "text/event-stream")
        assert json.loads(raw.decode("utf-8").split("\n\n")[-2][len("data:"):])["generated_text"].startswith("a")
        return
    error = json.loads(raw.decode("utf-8"))
    assert (got_status, reason, headers["content-type"]) == (status, http.client.responses[status], "application/json")
    assert sorted(error) == ["error", "error_type"] and error["error_type"] == error_type
    assert text in error["error"]
    assert "Traceback" not in error["error"] and not re.search(r"/\w+/\S+\.py", error["error"])
    ok_status, _, _, ok_body = server.post(GOOD, "application/json")
    assert ok_status == 200, ok_body
    assert json.loads(ok_body.decode("utf-8"))[0]["generated_text"].startswith("좋은 요청")


def test_a_body_over_the_payload_limit_is_refused_before_it_is_read(server):
    status, _, headers, body = server.post(b'"' + b"a" * 7_000_000 + b'"', "application/json")
    assert (status, headers["content-type"], headers["connection"]) == (413, "application/json", "close")
    assert json.loads(body.decode("utf-8")) == {
        "error": "the request body has 7000002 bytes; this server takes at most 6553500 (SAGEMAKER_MAX_PAYLOAD_IN_MB)",
        "error_type": "payload_too_large"}
    assert server.post(GOOD, "application/json")[0] == 200


def test_stream_false_is_accepted_as_tgi_clients_send_it(server, generator):
    status, answer = server.post_json({"inputs": "흐르는 강물", "stream": False, "parameters": {"max_new_tokens": 4}})
    want = expected(generator, "흐르는 강물", max_new_tokens=4)[0].text
    assert (status, answer) == (200, [{"generated_text": "흐르는 강물" + want}])


@pytest.mark.parametrize("method, path, allow", [
    ("GET", "/invocations", "POST"), ("PUT", "/invocations", "POST"), ("DELETE", "/invocations", "POST"),
    ("PATCH", "/invocations", "POST"), ("POST", "/ping", "GET, HEAD"), ("DELETE", "/ping", "GET, HEAD"),
])
def test_other_methods_get_405_with_allow_and_nothing_is_generated(server, method, path, allow):
    status, reason, headers, body = server.request(method, path, GOOD.encode("utf-8"),
                                                   {"Content-Type": "application/json"})
    assert (status, reason, headers["allow"], headers["content-type"]) == (
        405, "Method Not Allowed", allow, "application/json")
    assert json.loads(body.decode("utf-8")) == {
        "error": "{} {} is not supported; use {}".format(method, path, allow), "error_type": "method_not_allowed"}
    assert server.post(GOOD, "application/json")[0] == 200


def test_ping_answers_get_and_head(server):
    assert server.request("GET", "/ping")[0] == 200
    status, _, headers, body = server.request("HEAD", "/ping")
    assert (status, body) == (200, b"") and int(headers["content-length"]) > 0


EVIL_HANDLER = '''
import os


class Evil(object):
    def initialize(self, context):
        open(os.path.join(os.path.dirname(__file__), "ran"), "w").close()

    def handle(self, data, context):
        return ["evil"]
'''


@pytest.mark.parametrize("method, path", [
    ("POST", "/models?url={evil}&model_name=evil&handler=evil_service&initial_workers=1&synchronous=true"),
    ("POST", "/models?url=http://127.0.0.1:1/evil.mar&model_name=evil"),
    ("DELETE", "/models/model"),
    ("PUT", "/models/model?min_worker=0&max_worker=0&synchronous=true"),
    ("GET", "/models"),
    ("GET", "/models/model"),
    ("POST", "/predictions/model"),
    ("POST", "/models/model/invoke"),
    ("POST", "/model/predict"),
    ("GET", "/api-description"),
    ("OPTIONS", "/"),
    ("OPTIONS", "/invocations"),
])
def test_management_and_other_mms_routes_are_not_served_and_the_model_stays(server, tmp_path, method, path):
    evil = tmp_path / "evil"
    evil.mkdir()
    (evil / "evil_service.py").write_text(EVIL_HANDLER)
    status, _, headers, body = server.request(method, path.format(evil=evil), b'"a"',
                                              {"Content-Type": "application/json"})
    error = json.loads(body.decode("utf-8"))
    route = path.split("?")[0]
    if route in ("/invocations", "/") and method == "OPTIONS" and (server.frontend == "native" or route != "/"):
        assert (status, headers["allow"], error["error_type"]) == (405, "POST", "method_not_allowed")
    else:
        assert (status, error) == (404, {"error": "no route {}; this server answers {}".format(route, ANSWERS[
            server.frontend]), "error_type": "not_found"})
    assert not (evil / "ran").exists()
    if server.frontend == "mms":
        status, listed = server.management("GET", "/models")
        assert status == 200 and [m["modelName"] for m in json.loads(listed.decode("utf-8"))["models"]] == ["model"]
    assert server.post(GOOD, "application/json")[0] == 200


ANSWERS = {"mms": "POST /invocations and GET /ping",
           "native": "POST /invocations, GET /ping, POST /generate, POST /generate_stream, POST /, GET /info, GET /health"}
# Malformed HTTP: the MMS path's gateway answers in the package's error schema; on the native
# frontend aiohttp answers (plain text) before any handler runs, with its own statuses.
MALFORMED = [  # (raw request, status from the gateway, status from aiohttp)
    (b"GARBAGE\r\n\r\n", 400, 400), (b"POST /invocations HTTP/2.0\r\n\r\n", 505, 505),
    (b"Content-Length: 3\r\nContent-Length: 4\r\n\r\nabc", 400, 400), (b"Content-Length: -1\r\n\r\n", 400, 400),
    (b"Transfer-Encoding: gzip\r\n\r\n", 501, 400),
    (b"GET /ping HTTP/1.1\r\nX-Long: " + b"a" * 70000 + b"\r\n\r\n", 431, 400),
]


def test_http_edges_chunked_bodies_expect_continue_keep_alive_and_malformed_requests(server, generator):
    want = expected(generator, "가자", max_new_tokens=2)[0].text
    body = json.dumps({"inputs": "가자", "parameters": {"max_new_tokens": 2}}, ensure_ascii=False).encode("utf-8")
    chunked = b"".join(b"%x\r\n%s\r\n" % (len(body[i:i + 7]), body[i:i + 7]) for i in range(0, len(body), 7))
    head = b"POST /invocations HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
    answers = raw_exchange(server.port, head + b"Transfer-Encoding: chunked\r\n\r\n" + chunked + b"0\r\n\r\n")
    assert answers.startswith(b"HTTP/1.1 200 OK\r\n") and ("가자" + want).encode("utf-8") in answers
    with socket.create_connection(("127.0.0.1", server.port), timeout=60) as sock:  # Expect: 100-continue
        sock.sendall(head + b"Expect: 100-continue\r\nContent-Length: %d\r\n\r\n" % len(body))
        assert sock.recv(64) == b"HTTP/1.1 100 Continue\r\n\r\n"
        sock.sendall(body)
        assert read_until_body(sock).startswith(b"HTTP/1.1 200 OK\r\n")
    connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=60)  # keep-alive: one connection
    for _ in range(3):
        connection.request("POST", "/invocations", body, {"Content-Type": "application/json"})
        response = connection.getresponse()
        assert (response.status, json.loads(response.read().decode("utf-8"))) == (
            200, [{"generated_text": "가자" + want}])
    connection.close()
    for raw, gateway_status, aiohttp_status in MALFORMED:
        raw = raw if raw.startswith((b"GARBAGE", b"GET", b"POST")) else head + raw
        status = gateway_status if server.frontend == "mms" else aiohttp_status
        answer = raw_exchange(server.port, raw)
        assert re.match(r"HTTP/\d\.\d {} ".format(status).encode("ascii"), answer), (raw[:40], answer[:200])
        assert server.frontend == "native" or b'"error_type": ' in answer
    assert server.post(GOOD, "application/json")[0] == 200


def raw_exchange(port, data):
    """Send raw bytes, read until the server closes or answers once."""
    with socket.create_connection(("127.0.0.1", port), timeout=60) as sock:
        sock.sendall(data)
        return read_until_body(sock)


def read_until_body(sock):
    """One HTTP answer (head + Content-Length body) from a socket."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            return data
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    length = int(re.search(rb"(?i)content-length: (\d+)", head).group(1))
    while len(body) < length:
        chunk = sock.recv(65536)
        if not chunk:
            break
        body += chunk
    return head + b"\r\n\r\n" + body


def test_eight_concurrent_clients_get_what_each_request_gives_alone(server):
    def body(client, n):
        return json.dumps({"inputs": "{}번 손님의 {}번째 질문".format(client, n), "parameters": {
            "do_sample": True, "seed": 1000 * client + n, "max_new_tokens": 8, "top_p": 0.9}}, ensure_ascii=False)

    requests = {(c, n): body(c, n) for c in range(8) for n in range(10)}
    alone = {key: server.post(b, "application/json") for key, b in requests.items()}
    together, failures = {}, []

    def client(c):
        try:
            for n in range(10):
                together[(c, n)] = server.post(requests[(c, n)], "application/json")
        except Exception as e:  # noqa: B902 -- reported below
            failures.append(e)

    threads = [threading.Thread(target=client, args=(c,)) for c in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert failures == []
    assert sorted(s for s, _, _, _ in together.values()) == [200] * 80
    assert {k: v[3] for k, v in together.items()} == {k: v[3] for k, v in alone.items()}
    assert len({v[3] for v in alone.values()}) == 80  # distinct prompts and seeds, distinct answers


def test_no_worker_died_or_restarted(server, workers_at_start):
    # Runs last in this module: after every bad request above the same workers (and the same
    # engine) are still serving.
    if server.frontend == "mms":
        assert server.workers() == workers_at_start
    assert len(server.engine_groups) == 1
    assert "Worker died" not in server.log_text() and "Backend worker process died" not in server.log_text()
    assert "Traceback" not in server.log_text()
