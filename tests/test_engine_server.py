"""The engine process behind light MMS workers, for real: concurrent clients over loopback HTTP,
continuous batching observed in the engine's counters, and the faults a hostile client or a
crash brings (engine killed, queue full, deadline, client gone, SIGTERM, a wedged MMS)."""
import json
import os
import signal
import threading
import time

import pytest

from kogpt2_serving.generation.params import parse_parameters
from server_utils import ServeProcess, _processes, hang_up_once_decoding

pytestmark = pytest.mark.serves

PROMPTS = ["대한민국은", "아기 공룡 둘리는 희동이와", "서울에서 부산까지 기차로 3시간 20분이 걸린다!", "학생들은",
           "오늘은 날씨가", "컴퓨터와", "우리는", "한국어 모델이"]


def mixed_requests():
    """16 requests: prompts of different lengths; greedy, seeded sampling, stop strings, several
    sequences, details; 3 to 60 new tokens."""
    requests = []
    for i in range(16):
        params = {"max_new_tokens": [3, 60, 12, 25, 40, 8][i % 6]}
        if i % 3 == 1:
            params.update(do_sample=True, seed=100 + i, top_k=[0, 20, 50][i % 3], temperature=0.8)
        if i % 4 == 2:
            params["stop"] = ["다", "는"]
        if i % 5 == 3:
            params.update(num_return_sequences=2, do_sample=True, seed=7)
        if i % 7 == 0:
            params["details"] = True
        requests.append({"inputs": PROMPTS[i % len(PROMPTS)], "parameters": params})
    return requests


def alone(generator, request):
    """What the in-process generator gives the request alone, rendered as the server renders it."""
    sequences = generator.generate([request["inputs"]], parse_parameters(request["parameters"]))[0]
    return [request["inputs"] + s.text for s in sequences]


def in_parallel(function, arguments):
    results = [None] * len(arguments)

    def run(i):
        results[i] = function(arguments[i])

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(arguments))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    return results


@pytest.fixture(scope="module")
def engine_server(tiny_model_dir):
    with ServeProcess(tiny_model_dir, ["--workers", "16"]) as server:
        yield server


def test_sixteen_concurrent_clients_get_what_they_get_alone_and_share_steps(engine_server, generator):
    requests = mixed_requests()
    before = engine_server.engine_stats()
    answers = in_parallel(engine_server.post_json, requests)
    for request, (status, answer) in zip(requests, answers):
        assert status == 200, answer
        assert [a["generated_text"] for a in answer] == alone(generator, request), request
    stats = engine_server.engine_stats()
    assert stats["requests"] - before["requests"] == 16
    assert stats["shared_steps"] > before["shared_steps"]  # rows of different requests shared steps
    assert stats["joins"] > before["joins"]  # requests joined a batch that was already running
    assert stats["max_rows"] > 1


def test_details_carry_the_engines_finish_reason_and_seed(engine_server, generator):
    request = {"inputs": "학생들은", "parameters": {"max_new_tokens": 6, "do_sample": True, "seed": 3, "details": True}}
    status, answer = engine_server.post_json(request)
    want = generator.generate(["학생들은"], parse_parameters(request["parameters"]))[0][0]
    details = answer[0]["details"]
    assert status == 200 and (details["seed"], details["finish_reason"]) == (3, want.finish_reason)
    assert [t["id"] for t in details["tokens"]] == want.token_ids
    assert [t["logprob"] for t in details["tokens"]] == pytest.approx([t.logprob for t in want.tokens], abs=1e-4)


def test_bad_requests_are_answered_by_the_light_worker(engine_server):
    before = engine_server.engine_stats()["requests"]
    status, answer = engine_server.post_json({"inputs": "a", "parameters": {"max_new_tokens": 0}})
    assert status == 400 and answer["error_type"] == "invalid_parameter"
    status, answer = engine_server.post_json({"inputs": "가나다라 " * 60, "parameters": {"max_new_tokens": 90}})
    assert status == 413 and answer["error_type"] == "prompt_too_long"
    assert engine_server.engine_stats()["requests"] == before  # none of them reached the engine


def test_the_light_workers_never_import_mxnet(engine_server):
    workers = [pid for pid, _ in _processes() if _cmdline(pid).find("model_service_worker") >= 0
               and _in_group(pid, engine_server.mms_group)]
    assert len(workers) >= 16
    for pid in workers:
        with open("/proc/{}/maps".format(pid)) as f:
            assert "libmxnet" not in f.read(), pid


def _cmdline(pid):
    try:
        with open("/proc/{}/cmdline".format(pid), "rb") as f:
            return f.read().decode("utf-8", "replace")
    except OSError:
        return ""


def _in_group(pid, group):
    return any(p == pid and g == group for p, g in _processes())


def test_a_client_that_hangs_up_stops_costing_steps(engine_server):
    before = engine_server.engine_stats()
    hang_up_once_decoding(engine_server.port, lambda: engine_server.engine_stats()["steps"])
    deadline = time.time() + 10
    while engine_server.engine_stats()["cancelled"] == before["cancelled"] and time.time() < deadline:
        time.sleep(0.02)
    after = engine_server.engine_stats()
    assert after["cancelled"] == before["cancelled"] + 1
    assert after["steps"] - before["steps"] < 79  # not every step of the 80 it asked for
    assert engine_server.post_json({"inputs": "a", "parameters": {"max_new_tokens": 2}})[0] == 200


@pytest.fixture(scope="module")
def long_model_dir(tmp_path_factory):
    """The tiny model with 1024 positions: 1000 tokens of 16 rows take seconds even here."""
    from kogpt2_serving.testing import make_test_model

    return make_test_model(str(tmp_path_factory.mktemp("long")), n_embd=64, n_head=4, n_positions=1024)


def test_the_request_timeout_ends_a_generation_with_time_limit(long_model_dir):
    env = {"KOGPT2_REQUEST_TIMEOUT_SECONDS": "0.3", "KOGPT2_MAX_REQUEST_TOKENS": "16000"}
    with ServeProcess(long_model_dir, ["--workers", "2"], env=env) as server:
        request = {"inputs": "대한민국은", "parameters": {"max_new_tokens": 1000, "min_new_tokens": 1000,
                                                      "num_return_sequences": 16, "do_sample": True, "details": True}}
        started = time.time()
        status, answer = server.post_json(request)
        elapsed = time.time() - started
        plain = {"inputs": "대한민국은", "parameters": {"max_new_tokens": 1000, "min_new_tokens": 1000}}
        status_plain, _, headers, body = server.post(json.dumps(plain))
        short_status, _, short_headers, _ = server.post(json.dumps({"inputs": "a", "parameters": {
            "max_new_tokens": 2}}))
    # Without details the body has no finish reason: a header says the request stopped for time.
    assert status_plain == 200 and headers["x-kogpt2-finish-reason"] == "time_limit", headers
    assert short_status == 200 and "x-kogpt2-finish-reason" not in short_headers
    assert status == 200, answer
    reasons = {a["details"]["finish_reason"] for a in answer}
    assert reasons == {"time_limit"}, reasons
    assert all(0 < a["details"]["generated_tokens"] < 1000 for a in answer)
    assert elapsed < 3  # stopped at the deadline (plus a step), not after 1000 tokens


def test_a_full_queue_answers_503(tiny_model_dir):
    env = {"KOGPT2_MAX_QUEUE": "1", "KOGPT2_MAX_BATCH_ROWS": "16"}
    body = {"inputs": "대한민국은", "parameters": {"max_new_tokens": 80, "min_new_tokens": 80,
                                               "num_return_sequences": 16, "do_sample": True}}
    with ServeProcess(tiny_model_dir, ["--workers", "8"], env=env) as server:
        answers = in_parallel(lambda _: server.post_json(body), list(range(8)))
        statuses = sorted(status for status, _ in answers)
        assert 200 in statuses and 503 in statuses, statuses
        assert set(statuses) == {200, 503}
        full = [answer for status, answer in answers if status == 503]
        assert all(a["error_type"] == "queue_full" for a in full), full
        assert "requests are already waiting for a decode slot" in full[0]["error"]
        assert server.post_json(body)[0] == 200  # served again once the queue drained


def test_an_engine_killed_under_load_is_restarted_and_serving_resumes(tiny_model_dir):
    body = {"inputs": "대한민국은", "parameters": {"max_new_tokens": 85, "min_new_tokens": 85,
                                               "num_return_sequences": 16, "do_sample": True}}
    with ServeProcess(tiny_model_dir, ["--workers", "4"]) as server:
        serve_pid, engine_pid = server.proc.pid, server.engine_pid
        results = []
        clients = [threading.Thread(target=lambda: results.append(server.post_json(body))) for _ in range(4)]
        for client in clients:
            client.start()
        time.sleep(0.15)
        os.kill(engine_pid, signal.SIGKILL)
        for client in clients:
            client.join(60)
        failed = [answer for status, answer in results if status != 200]
        assert failed, "every request finished before the engine was killed: nothing was tested"
        for answer in failed:
            assert answer["error_type"] == "engine_unavailable", answer
        deadline = time.time() + 60
        while time.time() < deadline:
            status, answer = server.post_json({"inputs": "a", "parameters": {"max_new_tokens": 2}})
            if status == 200:
                break
            assert answer["error_type"] == "engine_unavailable", answer
            time.sleep(0.2)
        assert status == 200
        assert server.proc.pid == serve_pid and server.proc.poll() is None  # the same server
        assert server.engine_pid != engine_pid
        assert "the engine process (pid {}) exited".format(engine_pid) in server.log_text(cli_only=True)
        assert server.request("GET", "/ping")[0] == 200


def test_sigterm_under_load_drains_and_leaves_no_process(tiny_model_dir):
    body = {"inputs": "대한민국은", "parameters": {"max_new_tokens": 85, "min_new_tokens": 85,
                                               "num_return_sequences": 8, "do_sample": True}}
    server = ServeProcess(tiny_model_dir, ["--workers", "8"])
    with server:
        results = []
        clients = [threading.Thread(target=lambda: results.append(server.post_json(body))) for _ in range(8)]
        for client in clients:
            client.start()
        time.sleep(0.1)
        server.stop()  # SIGTERM; raises if any process of the server (engine included) is left
        for client in clients:
            client.join(60)
    assert server.returncode == 0
    assert len(results) == 8 and all(status == 200 for status, _ in results), [s for s, _ in results]


def test_a_wedged_model_server_makes_serve_exit_non_zero(tiny_model_dir):
    """The watchdog's case: MMS's only worker killed (listener, then its child) leaves MMS
    waiting minutes before it retries while its /ping says 200; serve notices and exits 1."""
    env = {"KOGPT2_WATCHDOG_SECONDS": "0.5", "KOGPT2_REQUEST_TIMEOUT_SECONDS": "1"}
    server = ServeProcess(tiny_model_dir, ["--workers", "1"], env=env)
    with server:
        listener = [pid for pid, group in _processes() if group == server.mms_group
                    and "model_service_worker" in _cmdline(pid)]
        for pid in sorted(listener):  # the listener first, then the child it forked
            os.kill(pid, signal.SIGKILL)
        deadline = time.time() + 90
        while server.proc.poll() is None and time.time() < deadline:
            time.sleep(0.5)
        log = server.log_text(cli_only=True)
        assert server.proc.poll() == 1, log[-2000:]
        assert "watchdog: the serving path is failing (1 of 3 probes): no answer to POST /invocations" in log
        assert "the watchdog found the server wedged" in log
