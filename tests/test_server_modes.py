"""`kogpt2-serving serve` in its other modes, each a real server over loopback HTTP:
MMS batching, a user's inference.py overriding handler functions, a model that fails to
load, and the refused port range."""
import json
import os
import re
import shutil
import signal
import socket
import time

import pytest

from kogpt2_serving.cli import main
from kogpt2_serving.model.device import cpu_count, threads_per_worker
from kogpt2_serving.settings import explicit_threads
from server_utils import ServeProcess, free_port


@pytest.fixture(scope="module")
def batching_server(tiny_model_dir):
    with ServeProcess(tiny_model_dir, extra_args=["--batch-size", "4", "--max-batch-delay", "20"]) as running:
        yield running


def test_batching_registers_the_model_with_its_batch_size_and_serves_it(batching_server, generator):
    # Requests one at a time: MMS 1.1.11 can drop the worker connection when a response for
    # several batched requests reaches it in pieces (see docs/serving.md), so concurrent
    # batches are exercised in-process (test_handler) and measured by benchmarks/server_load.py.
    server = batching_server
    described = server.described_model()
    assert (described["batchSize"], described["maxBatchDelay"], server.inference_path) == (4, 20, "/invocations")
    params = {"max_new_tokens": 5, "do_sample": True, "seed": 21}
    status, answer = server.post_json({"inputs": "배치 요청", "parameters": params})
    want = generator.generate(["배치 요청"], generator_params(**params))[0][0].text
    assert (status, answer) == (200, [{"generated_text": "배치 요청" + want}])
    status, error = server.post_json({"inputs": ""})
    assert (status, error["error_type"]) == (400, "invalid_parameter")
    assert "experimental" in server.log_text(cli_only=True)


def test_the_gateway_routes_plain_invocations_to_the_batched_model(batching_server):
    # MMS 1.1 itself answers plain /invocations 400 "model_name is required" for a model registered
    # with a batch size; the gateway forwards it to MMS's /predictions/model instead.
    for path in ("/invocations", "/invocations?model_name=other"):  # a query string is not passed on
        status, _, _, body = batching_server.request("POST", path, b'"a"', {"Content-Type": "application/json"})
        assert status == 200 and json.loads(body.decode("utf-8"))[0].startswith("a"), body
    status, _, _, _ = batching_server.request("POST", "/predictions/model", b'"a"', {"Content-Type": "application/json"})
    assert status == 404


USER_CODE = '''
import json

from kogpt2_serving.handler import predict_fn as package_predict_fn


def input_fn(body, content_type):
    # this user's clients send {"text": ...}; the request arrives as str for application/json
    assert isinstance(body, str), type(body)
    from kogpt2_serving.serving.codec import decode_payload
    return decode_payload(json.dumps({"inputs": json.loads(body)["text"],
                                      "parameters": {"max_new_tokens": 3}}), "application/json")


def predict_fn(data, model, context):
    prediction = package_predict_fn(data, model)
    return prediction, context.get_request_header(0, "X-Client")


def output_fn(result, accept):
    prediction, client = result
    texts = [s.text for a in prediction.answers for seqs in a.sequences for s in seqs]
    return json.dumps({"client": client, "continuations": texts}), "application/vnd.user+json"
'''


def test_a_user_inference_py_overrides_the_handler_functions(tiny_model_dir, tmp_path, generator):
    model_dir = tmp_path / "model"
    shutil.copytree(tiny_model_dir, str(model_dir))
    (model_dir / "code").mkdir()
    (model_dir / "code" / "inference.py").write_text(USER_CODE, encoding="utf-8")
    with ServeProcess(str(model_dir)) as server:
        assert re.search(r"inference\.py defines predict_fn: the model runs in every worker \(each holds its own "
                         r"copy\), not in an engine process", server.log_text(cli_only=True))
        assert server.engine_pid is None
        status, _, headers, body = server.request("POST", "/invocations", '{"text": "오늘은"}'.encode("utf-8"),
                                                  {"Content-Type": "application/json", "X-Client": "t-1"})
        expected = generator.generate(["오늘은"], generator_params(max_new_tokens=3))[0][0].text
        assert (status, headers["content-type"]) == (200, "application/vnd.user+json")
        assert json.loads(body.decode("utf-8")) == {"client": "t-1", "continuations": [expected]}
        status, _, _, body = server.post(b'{"wrong": 1}', "application/json")  # the user's code fails: a plain 500
        assert status == 500 and json.loads(body.decode("utf-8")) == {
            "error": "internal server error; see the server log", "error_type": "internal_error"}
        assert server.post('{"text": "a"}', "application/json")[0] == 200


def generator_params(**values):
    from kogpt2_serving.generation.params import GenerationParameters

    return GenerationParameters()._replace(**values)


@pytest.mark.parametrize("engine, failed", [
    ("on", "the engine process exited with status 1 during start-up"),
    ("off", "the model failed to load in the worker"),
])
def test_a_model_that_fails_to_load_ends_start_up_with_an_error(tiny_model_dir, tmp_path, engine, failed):
    model_dir = tmp_path / "broken"
    shutil.copytree(tiny_model_dir, str(model_dir))
    for params in model_dir.glob("*.params"):
        params.write_bytes(b"not an MXNet file")
    server = ServeProcess(str(model_dir), ["--engine", engine], startup_timeout=120)
    with pytest.raises(RuntimeError) as e:
        with server:
            pass
    message = str(e.value)
    assert "serve exited with 1 before it was ready" in message
    cause = re.search(r"error: {}: (.*?)(; last lines of|$)".format(failed), message, re.M).group(1)
    assert cause.startswith("cannot read checkpoint {}".format(next(model_dir.glob("*.params"))))
    assert cause.endswith("Invalid NDArray file format") and "Traceback" not in cause  # the cause, not a header
    assert server.proc is None  # stopped; stop() checked that nothing was left running


def test_engine_off_loads_the_model_in_each_worker(tiny_model_dir):
    with ServeProcess(tiny_model_dir, ["--engine", "off"]) as server:
        log = server.log_text(cli_only=True)
        assert "using 1 worker(s)" in log and server.engine_pid is None
        threads, cores = int(explicit_threads() or threads_per_worker(1)), cpu_count()
        assert "1 worker(s), {} CPU thread(s) per worker on {} core(s)".format(threads, cores) in log
        assert [status for _, _, status in server.workers()] == ["READY"]
        assert server.post(b'"a"', "application/json")[0] == 200


def test_engine_on_with_mms_batching_is_refused(tiny_model_dir, capsys):
    assert main(["serve", "--model-dir", tiny_model_dir, "--engine", "on", "--batch-size", "4"]) == 1
    assert "--batch-size is MMS batching for in-process workers (--engine off)" in capsys.readouterr().err


@pytest.mark.parametrize("code, args, env, text", [
    ("def input_fn(body, content_type):\n    return body\n", [], {},
     "--frontend native runs the package's own request handling, not a user's inference.py ("),
    (None, ["--engine", "off"], {}, "--frontend native needs the engine process"),
    (None, [], {"KOGPT2_FRONTEND": "tgi"}, "KOGPT2_FRONTEND must be mms or native, got 'tgi'"),
])
def test_the_native_frontend_is_refused_where_it_cannot_serve(tiny_model_dir, tmp_path, monkeypatch, capsys, code,
                                                             args, env, text):
    model_dir = tiny_model_dir
    if code is not None:  # a copy of the model with a user's input_fn
        model_dir = str(tmp_path / "model")
        shutil.copytree(tiny_model_dir, model_dir)
        os.makedirs(os.path.join(model_dir, "code"))
        with open(os.path.join(model_dir, "code", "inference.py"), "w") as f:
            f.write(code)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    frontend = [] if env else ["--frontend", "native"]
    assert main(["serve", "--model-dir", model_dir] + frontend + args) == 1
    error = capsys.readouterr().err
    assert text in error
    if code is not None:
        assert "inference.py defines input_fn" in error and "use --frontend mms" in error


def test_sigint_stops_the_server_cleanly(tiny_model_dir):
    server = ServeProcess(tiny_model_dir)
    with server:
        assert server.post(b'"a"', "application/json")[0] == 200
        members = server.group_members()
        assert len(members) >= 4  # serve, MMS launcher, JVM, worker(s)
        server.stop(signum=signal.SIGINT)  # raises if anything is left running
    assert server.returncode == 0


@pytest.mark.parametrize("port, text", [(32767, "only accepts ports 1-32766"), (40000, "only accepts ports 1-32766"),
                                        (0, "only accepts ports 1-32766")])
def test_ports_mms_rejects_are_refused_with_a_clear_message(tiny_model_dir, capsys, port, text):
    assert main(["serve", "--model-dir", tiny_model_dir, "--port", str(port)]) == 1
    assert text in capsys.readouterr().err


def test_a_port_in_use_is_refused_before_anything_starts(tiny_model_dir, capsys):
    port = free_port()  # inside MMS's range, so the port-range check passes and the bind is what fails
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", port))
        taken.listen()
        assert main(["serve", "--model-dir", tiny_model_dir, "--port", str(port)]) == 1
    assert "error: cannot listen on 127.0.0.1:{}: Address already in use".format(port) in capsys.readouterr().err


def _int8_runs():
    from kogpt2_serving import kernels

    return kernels.problem()


@pytest.mark.parametrize("dtype", [
    pytest.param("bfloat16", marks=pytest.mark.requires_bfloat16),
    pytest.param("int8", marks=pytest.mark.skipif(bool(_int8_runs()), reason=_int8_runs() or "int8 runs"))])
def test_a_weight_dtype_reaches_the_engine(tiny_model_dir, dtype):
    """--dtype travels to the engine: the answer is that model's, not float32's."""
    from kogpt2_serving.generation.generator import Generator
    from kogpt2_serving.files.loader import load_model
    from kogpt2_serving.generation.params import parse_parameters

    prompt, raw = "아기 공룡 둘리는 희동이와", {"max_new_tokens": 8, "details": True}
    expected = {}
    for dtype in ("float32", dtype):
        generator = Generator(load_model(tiny_model_dir, device="cpu", dtype=dtype))
        sequence = generator.generate([prompt], parse_parameters(raw))[0][0]
        expected[dtype] = [(t.id, t.logprob) for t in sequence.tokens]
    # The engine may run other kernels than this process (its own thread count), so logprobs
    # agree within 1e-4 (~100x float32 rounding here); bfloat16 or int8 weights must move them
    # by more than 10x that (here ~4e-3), else this test could not tell the two apart.
    gap = max(abs(a[1] - b[1]) for a, b in zip(expected["float32"], expected[dtype]))
    assert gap > 1e-3 or [i for i, _ in expected["float32"]] != [i for i, _ in expected[dtype]]
    with ServeProcess(tiny_model_dir, extra_args=["--dtype", dtype]) as server:
        status, answer = server.post_json({"inputs": prompt, "parameters": raw})
    assert status == 200
    tokens = answer[0]["details"]["tokens"]
    assert [t["id"] for t in tokens] == [i for i, _ in expected[dtype]]
    assert [t["logprob"] for t in tokens] == pytest.approx([lp for _, lp in expected[dtype]], abs=1e-4)


def test_unknown_dtype_is_refused_before_starting(tiny_model_dir, capsys):
    assert main(["serve", "--model-dir", tiny_model_dir, "--dtype", "int4"]) == 1
    assert "--dtype must be one of float32, float16, bfloat16, int8, got 'int4'" in capsys.readouterr().err


FAULTY_CODE = '''
import os
import time

from kogpt2_serving.handler import input_fn as package_input_fn


def input_fn(body, content_type):
    text = body if isinstance(body, str) else bytes(body).decode("utf-8")
    if "die now" in text:
        os._exit(3)  # the worker process dies mid-request
    if "take your time" in text:
        time.sleep(30)  # longer than the response timeout below
    return package_input_fn(body, content_type)
'''


def test_worker_death_and_timeout_answer_in_the_package_error_schema(tiny_model_dir, tmp_path):
    model_dir = tmp_path / "model"
    shutil.copytree(tiny_model_dir, str(model_dir))
    (model_dir / "code").mkdir()
    (model_dir / "code" / "inference.py").write_text(FAULTY_CODE, encoding="utf-8")
    # MMS gives a worker's start-up the same 3 s: 32 light workers starting at once on 2 busy
    # cores missed it in a clean-clone run and were retried forever, so 2 workers here.
    with ServeProcess(str(model_dir), env={"SAGEMAKER_MODEL_SERVER_TIMEOUT_SECONDS": "3"},
                      extra_args=["--workers", "2"]) as server:
        for body in ('"die now"', '"take your time"'):
            started = time.time()
            status, reason, headers, raw = server.post(body, "application/json")
            assert (status, headers["content-type"]) == (500, "application/json"), raw
            assert json.loads(raw.decode("utf-8")) == {
                "error": "the worker handling this request died or did not answer within the response timeout; "
                         "it is being restarted, retry the request", "error_type": "worker_died"}
            assert time.time() - started < 25  # the timeout (3 s) ended it, not the 30 s sleep
            assert wait_for_ok(server), server.log_text()[-3000:]


def wait_for_ok(server, seconds=60):
    """MMS restarts a dead worker after a back-off: True once a good request is answered."""
    deadline = time.time() + seconds
    while time.time() < deadline:
        status, _, _, _ = server.post(b'{"inputs": "a", "parameters": {"max_new_tokens": 1}}', "application/json")
        if status == 200:
            return True
        time.sleep(0.5)
    return False
