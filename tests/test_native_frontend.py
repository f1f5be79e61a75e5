"""`serve --frontend native` for real: huggingface_hub's InferenceClient against TGI's routes,
Server-Sent Events on /invocations, TGI's semantics where they differ from the toolkit's, and a
client that disconnects mid-stream. (Every /invocations request and bad input of the MMS path
runs against this frontend too: tests/test_server.py.)"""
import http.client
import json
import os
import signal
import socket
import time

import pytest
from huggingface_hub import InferenceClient
from huggingface_hub.errors import OverloadedError, ValidationError

from kogpt2_serving.generation.params import GenerationParameters
from server_utils import ServeProcess

pytestmark = pytest.mark.serves

TGI_DEFAULTS = GenerationParameters(return_full_text=False, stop_style="tgi")


@pytest.fixture(scope="module")
def native(tiny_model_dir):
    with ServeProcess(tiny_model_dir, ["--frontend", "native"]) as server:
        yield server


@pytest.fixture(scope="module")
def long_model_dir(tmp_path_factory):
    """The tiny model with 1024 positions: long generations for streaming's timing and cancels."""
    from kogpt2_serving.testing import make_test_model

    return make_test_model(str(tmp_path_factory.mktemp("long")), n_embd=64, n_head=4, n_positions=1024)


@pytest.fixture(scope="module")
def demo():
    """The shipped demo model: real text, sentences that end with </s> (the tiny model repeats)."""
    from kogpt2_serving.files.default_model import DEMO_MODEL_DIR

    with ServeProcess(DEMO_MODEL_DIR, ["--frontend", "native"]) as server:
        yield server


@pytest.fixture(scope="module")
def client(native):
    return InferenceClient(base_url=native.url)


def alone(generator, prompt, **params):
    return generator.generate([prompt], TGI_DEFAULTS._replace(**params))[0][0]


def events(response):
    """Parse Server-Sent Events off an http.client response as they arrive -> JSON values."""
    while True:
        line = response.readline()
        if not line:
            return
        if line.startswith(b"data:"):
            yield json.loads(line[len(b"data:"):].decode("utf-8"))


def open_stream(server, path, value):
    connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=60)
    connection.request("POST", path, json.dumps(value, ensure_ascii=False).encode("utf-8"),
                       {"Content-Type": "application/json"})
    return connection, connection.getresponse()


def test_inference_client_text_generation_equals_the_in_process_generator(client, generator):
    want = alone(generator, "대한민국은", max_new_tokens=12)
    assert client.text_generation("대한민국은", max_new_tokens=12) == want.text
    detailed = client.text_generation("대한민국은", max_new_tokens=12, details=True)
    assert (detailed.generated_text, detailed.details.finish_reason, detailed.details.generated_tokens) == (
        want.text, want.finish_reason, want.generated_tokens)
    assert [t.id for t in detailed.details.tokens] == want.token_ids
    sampled = client.text_generation("학생들은", max_new_tokens=10, do_sample=True, seed=42, top_k=20, details=True)
    expected = alone(generator, "학생들은", max_new_tokens=10, do_sample=True, seed=42, top_k=20)
    assert (sampled.generated_text, sampled.details.seed) == (expected.text, 42)


def test_streamed_tokens_joined_equal_the_text_and_the_last_event_has_the_details(client, generator):
    text = client.text_generation("서울에서 부산까지", max_new_tokens=20, details=True)
    streamed = list(client.text_generation("서울에서 부산까지", max_new_tokens=20, stream=True, details=True))
    assert [e.index for e in streamed] == list(range(1, len(streamed) + 1))
    assert "".join(e.token.text for e in streamed if not e.token.special) == text.generated_text
    assert [e.token.id for e in streamed] == [t.id for t in text.details.tokens]
    assert all(e.generated_text is None and e.details is None for e in streamed[:-1])
    last = streamed[-1]
    assert (last.generated_text, last.details.finish_reason, last.details.generated_tokens) == (
        text.generated_text, text.details.finish_reason, text.details.generated_tokens)
    assert last.details.input_length == alone(generator, "서울에서 부산까지", max_new_tokens=1).prompt_tokens
    plain = list(client.text_generation("서울에서 부산까지", max_new_tokens=20, stream=True))
    assert "".join(plain) == text.generated_text


def generate(server, request):
    status, _, _, body = server.request("POST", "/generate", json.dumps(request).encode("utf-8"),
                                        {"Content-Type": "application/json"})
    assert status == 200, body
    return json.loads(body.decode("utf-8"))


def test_eos_streams_as_a_special_token_and_ends_the_text(demo):
    request = {"inputs": "대한민국의 주권은", "parameters": {"max_new_tokens": 60, "details": True}}
    whole = generate(demo, request)
    streamed = list(events(open_stream(demo, "/generate_stream", request)[1]))
    assert whole["details"]["finish_reason"] == "eos_token"
    assert whole["details"]["tokens"][-1] == dict(whole["details"]["tokens"][-1], text="</s>", special=True)
    assert [e["token"] for e in streamed] == whole["details"]["tokens"]
    assert streamed[-1]["generated_text"] == whole["generated_text"] == "".join(
        e["token"]["text"] for e in streamed if not e["token"]["special"])
    assert "</s>" not in whole["generated_text"]


def test_tgi_routes_follow_tgis_stop_rule_and_invocations_keeps_the_toolkits(demo):
    # TGI (server/text_generation_server/utils/tokens.py, StopSequenceCriteria): a stop string
    # ends generation when the output ends with it, and generated_text keeps it. /invocations
    # cuts the match off wherever it starts, as the HF toolkit does.
    prompt, parameters = "대한민국은", {"max_new_tokens": 20, "details": True}
    pieces = [t["text"] for t in generate(demo, {"inputs": prompt, "parameters": parameters})["details"]["tokens"]]
    k = next(k for k in range(2, 20) if len(pieces[k - 1].strip()) > 1 and pieces[k - 1] not in "".join(pieces[:k - 1]))
    stop, text = pieces[k - 1], "".join(pieces[:k])  # the text first ends with `stop` after k tokens
    tgi = generate(demo, {"inputs": prompt, "parameters": dict(parameters, stop=[stop])})
    assert (tgi["generated_text"], tgi["details"]["finish_reason"], tgi["details"]["generated_tokens"]) == (
        text, "stop_sequence", k)
    # A stop string inside a token's text that the text never ends with: TGI goes on to the end.
    inside = next(p[:-1] for p in pieces if p[:-1].strip() and not any(
        "".join(pieces[:j]).endswith(p[:-1]) for j in range(1, 21)))
    assert generate(demo, {"inputs": prompt, "parameters": dict(parameters, stop=[inside])})[
        "generated_text"] == "".join(pieces)
    status, answer = demo.post_json({"inputs": prompt, "parameters": {"max_new_tokens": 20, "stop": [stop],
                                                                   "return_full_text": False}})
    assert (status, answer) == (200, [{"generated_text": text[:text.find(stop)]}])


def test_generate_answers_an_object_and_the_root_route_a_list(native, generator):
    want = alone(generator, "오늘은 날씨가", max_new_tokens=6)
    status, _, _, body = native.request("POST", "/generate", json.dumps(
        {"inputs": "오늘은 날씨가", "parameters": {"max_new_tokens": 6}}).encode("utf-8"),
        {"Content-Type": "application/json"})
    assert (status, json.loads(body.decode("utf-8"))) == (200, {"generated_text": want.text})
    status, _, _, body = native.request("POST", "/", json.dumps(
        {"inputs": "오늘은 날씨가", "parameters": {"max_new_tokens": 6, "return_full_text": True}}).encode("utf-8"),
        {"Content-Type": "application/json"})
    assert (status, json.loads(body.decode("utf-8"))) == (200, [{"generated_text": "오늘은 날씨가" + want.text}])


def test_tgi_errors_reach_the_client_as_its_own_exceptions(client, native):
    with pytest.raises(ValidationError, match="`best_of` is not supported"):
        client.text_generation("a", best_of=2, do_sample=True)
    with pytest.raises(ValidationError, match="`best_of` is not supported"):
        list(client.text_generation("a", best_of=2, do_sample=True, stream=True))
    status, _, headers, body = native.request("POST", "/generate", b'{"inputs": "a", "parameters": {"max_new_tokens": '
                                                                   b'2000}}', {"Content-Type": "application/json"})
    assert (status, headers["content-type"], json.loads(body.decode("utf-8"))) == (422, "application/json", {
        "error": "max_new_tokens must be in [1, 1024], got 2000", "error_type": "validation"})
    status, _, _, body = native.request("POST", "/generate", json.dumps({"inputs": "가나다 " * 40, "parameters": {
        "max_new_tokens": 60}}).encode("utf-8"), {"Content-Type": "application/json"})
    assert status == 422 and "exceeds the model's 96 positions" in json.loads(body.decode("utf-8"))["error"]
    assert native.request("POST", "/generate", b'{"inputs": "a"}', {"Content-Type": "text/plain"})[0] == 415


def test_invocations_streams_sse_in_tgis_schema_with_the_toolkits_full_text(native, generator):
    want = alone(generator, "학생들은", max_new_tokens=8)
    _, response = open_stream(native, "/invocations", {"inputs": "학생들은", "stream": True,
                                                       "parameters": {"max_new_tokens": 8, "details": True}})
    assert (response.status, response.getheader("Content-Type")) == (200, "text/event-stream")
    streamed = list(events(response))
    assert [e["token"]["id"] for e in streamed] == want.token_ids
    assert streamed[-1]["generated_text"] == "학생들은" + want.text  # return_full_text: the toolkit's default
    assert streamed[-1]["details"]["finish_reason"] == want.finish_reason


@pytest.mark.parametrize("body, text", [
    ({"inputs": ["a", "b"], "stream": True}, '"stream": true streams one prompt; "inputs" holds 2'),
    ({"inputs": "a", "stream": True, "parameters": {"num_beams": 2}}, "streams one sequence"),
    ({"inputs": "a", "stream": True, "parameters": {"do_sample": True, "num_return_sequences": 2}},
     "streams one sequence"),
])
def test_invocations_refuses_what_one_stream_cannot_carry(native, body, text):
    status, answer = native.post_json(body)
    assert (status, answer["error_type"]) == (400, "invalid_parameter") and text in answer["error"]


def test_info_health_and_ping(native):
    status, _, _, body = native.request("GET", "/info")
    info = json.loads(body.decode("utf-8"))
    assert status == 200 and (info["max_total_tokens"], info["model_pipeline_tag"]) == (96, "text-generation")
    assert native.request("GET", "/health")[:1] == (200,) and native.request("GET", "/health")[3] == b""
    assert native.request("GET", "/ping")[0] == 200


def test_the_first_token_arrives_long_before_the_generation_ends(long_model_dir):
    with ServeProcess(long_model_dir, ["--frontend", "native"]) as server:
        started = time.time()
        _, response = open_stream(server, "/generate_stream", {"inputs": "대한민국은", "parameters": {
            "max_new_tokens": 600}})
        arrivals = [time.time() - started for _ in events(response)]
        assert len(arrivals) == 600
        assert arrivals[0] < arrivals[-1] / 2, (arrivals[0], arrivals[-1])  # tokens leave as they are chosen


def test_a_client_that_disconnects_mid_stream_stops_its_rows_and_the_next_is_served(long_model_dir):
    with ServeProcess(long_model_dir, ["--frontend", "native"]) as server:
        before = server.engine_stats()
        connection, response = open_stream(server, "/generate_stream", {"inputs": "대한민국은", "parameters": {
            "max_new_tokens": 1000}})
        stream = events(response)
        assert [next(stream)["index"] for _ in range(3)] == [1, 2, 3]
        connection.sock.shutdown(socket.SHUT_RDWR)
        connection.close()
        deadline = time.time() + 10
        while server.engine_stats()["cancelled"] == before["cancelled"] and time.time() < deadline:
            time.sleep(0.01)
        after = server.engine_stats()
        assert after["cancelled"] == before["cancelled"] + 1
        # Its rows stopped: no step runs once the cancel is counted (nothing else is running), and
        # the 1000 tokens were never reached. (How many steps fit between the hang-up and the
        # cancel depends on the machine: steps of this model take well under a millisecond.)
        time.sleep(0.3)
        assert server.engine_stats()["steps"] - after["steps"] <= 1
        assert after["steps"] - before["steps"] < 1000
        assert "cancelled: its client hung up" in server.log_text()
        status, _, _, body = server.request("POST", "/generate", b'{"inputs": "a", "parameters": {"max_new_tokens": '
                                                                 b'2}}', {"Content-Type": "application/json"})
        assert status == 200


def test_a_full_queue_is_503_on_invocations_and_429_overloaded_on_tgis_routes(long_model_dir):
    # One 8-row request decodes (all the rows there are), one waits (the whole queue); no
    # watchdog, whose probes would count as requests.
    env = {"KOGPT2_MAX_QUEUE": "1", "KOGPT2_MAX_BATCH_ROWS": "8", "KOGPT2_WATCHDOG_SECONDS": "0",
           "KOGPT2_MAX_REQUEST_TOKENS": "8000"}
    with ServeProcess(long_model_dir, ["--frontend", "native"], env=env) as server:
        long = json.dumps({"inputs": "대한민국은", "parameters": {
            "max_new_tokens": 900, "min_new_tokens": 900, "do_sample": True, "num_return_sequences": 8}})
        submitted = server.engine_stats()["requests"]
        running = [http.client.HTTPConnection("127.0.0.1", server.port, timeout=60) for _ in range(2)]
        for n, connection in enumerate(running, 1):  # one after the other: the first must have left the queue
            connection.request("POST", "/invocations", long.encode("utf-8"), {"Content-Type": "application/json"})
            deadline = time.time() + 10
            while time.time() < deadline and not (server.engine_stats()["requests"] >= submitted + n
                                                   and server.engine_stats()["steps"] > 0):
                time.sleep(0.01)
        status, answer = server.post_json({"inputs": "a", "parameters": {"max_new_tokens": 2}})
        assert (status, answer) == (503, dict(answer, error_type="queue_full"))
        with pytest.raises(OverloadedError):
            InferenceClient(base_url=server.url).text_generation("a", max_new_tokens=2)
        for connection in running:
            connection.close()


def test_sigterm_mid_stream_finishes_the_stream_then_exits_leaving_no_process(long_model_dir):
    server = ServeProcess(long_model_dir, ["--frontend", "native"])
    with server:
        _, response = open_stream(server, "/generate_stream", {"inputs": "대한민국은", "parameters": {
            "max_new_tokens": 400}})
        stream = events(response)
        next(stream)
        os.kill(server.proc.pid, signal.SIGTERM)
        rest = list(stream)
        assert rest[-1]["generated_text"] is not None and len(rest) == 399
        assert server.proc.wait(30) == 0
    assert server.returncode == 0


def test_an_engine_killed_mid_stream_ends_the_stream_with_an_error_event_and_serving_resumes(long_model_dir):
    with ServeProcess(long_model_dir, ["--frontend", "native"]) as server:
        serve_pid, engine_pid = server.proc.pid, server.engine_pid
        _, response = open_stream(server, "/generate_stream", {"inputs": "대한민국은", "parameters": {
            "max_new_tokens": 1000}})
        stream = events(response)
        assert [next(stream)["index"] for _ in range(3)] == [1, 2, 3]
        os.kill(engine_pid, signal.SIGKILL)
        rest = list(stream)
        assert rest[-1] == {"error": rest[-1]["error"], "error_type": "engine_unavailable"}
        assert all("token" in e for e in rest[:-1]) and len(rest) < 997
        deadline = time.time() + 60
        while time.time() < deadline:
            status, answer = server.post_json({"inputs": "a", "parameters": {"max_new_tokens": 2}})
            if status == 200:
                break
            assert (status, answer["error_type"]) == (503, "engine_unavailable"), answer
            time.sleep(0.2)
        assert status == 200 and server.proc.pid == serve_pid and server.engine_pid != engine_pid
        assert server.request("GET", "/ping")[0] == 200


def test_ping_is_503_until_the_engine_is_ready_then_200(tiny_model_dir):
    server = ServeProcess(tiny_model_dir, ["--frontend", "native"])
    server.start()
    try:
        statuses, deadline = [], time.time() + 120
        while time.time() < deadline and not (statuses and statuses[-1] == 200):
            try:
                statuses.append(server.request("GET", "/ping", timeout=5)[0])
            except OSError:  # not listening yet
                pass
            time.sleep(0.05)
        server.wait_ready()
        assert statuses[0] == 503 and statuses[-1] == 200, statuses
        assert statuses == sorted(statuses, reverse=True)  # 503s, then 200s: never back
        assert server.request("GET", "/health")[0] == 200
    finally:
        server.stop()
