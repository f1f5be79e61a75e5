"""One engine process per device: the plan (how many, where, threads), the clients' choice of
engine and their fallback, the group's supervision, and real servers with two CPU engines
behind both frontends over loopback HTTP (no GPU here: the GPU launch is checked with a
mocked GPU count only)."""
import asyncio
import io
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time

import pytest

import kogpt2_serving
from kogpt2_serving.model.device import cpu_count
from kogpt2_serving.serving import engine_plan, engine_protocol, engine_supervisor
from kogpt2_serving.serving.engine_client import engine_call
from kogpt2_serving.serving.engine_group import EngineGroup, total_stats
from kogpt2_serving.serving.engine_plan import EnginePlan, EnginePlanError, engines_setting, plan_engines
from kogpt2_serving.serving.engine_pool import EnginePool, socket_paths
from kogpt2_serving.settings import ENGINES_ENV, THREADS_ENV
from kogpt2_serving.testing import free_port
from server_utils import ServeProcess, hang_up_once_decoding

# --- the plan ------------------------------------------------------------------------------------


@pytest.mark.parametrize("value, want", [(None, None), ("", None), ("auto", None), (" AUTO ", None), ("1", 1),
                                         ("2", 2), ("64", 64)])
def test_engines_setting_reads_a_count_or_auto(value, want):
    environ = {} if value is None else {ENGINES_ENV: value}
    assert engines_setting(None, environ) == want


@pytest.mark.parametrize("value", ["0", "-1", "65", "1.5", "two", "2 engines", "\u00b2"])
def test_a_bad_engine_count_names_the_setting_the_range_and_the_value(value):
    with pytest.raises(EnginePlanError) as raised:
        engines_setting(None, {ENGINES_ENV: value})
    assert raised.value.message == "KOGPT2_ENGINES must be auto or an integer in 1-64, got {!r}".format(value)
    with pytest.raises(EnginePlanError, match=r"^--engines must be auto or an integer in 1-64, got"):
        engines_setting(value, {ENGINES_ENV: "2"})  # the flag wins, and is checked the same way


def test_cpu_engines_split_the_cores():
    no_gpu = lambda: pytest.fail("a CPU plan must not count GPUs")  # noqa: E731
    assert plan_engines("cpu", None, no_gpu, cores=8, environ={}) == EnginePlan(("cpu",), 8)
    assert plan_engines("cpu", 3, no_gpu, cores=8, environ={}) == EnginePlan(("cpu",) * 3, 2)
    assert plan_engines("cpu", 4, no_gpu, cores=2, environ={}).threads == 1  # at least one each
    assert plan_engines("cpu", 2, no_gpu, cores=8, environ={THREADS_ENV: "3"}).threads is None  # the operator's
    assert engine_plan.oversubscribed(EnginePlan(("cpu",) * 2, None), {THREADS_ENV: "3"}, cores=8) is None
    assert engine_plan.oversubscribed(EnginePlan(("cpu",) * 2, None), {THREADS_ENV: "3"}, cores=4).startswith(
        "2 engines x 3 threads (KOGPT2_THREADS / OMP_NUM_THREADS) exceed the 4 cores")


def test_auto_is_one_engine_per_gpu_and_cpu_without_one():
    assert plan_engines("auto", None, lambda: 0, cores=2, environ={}).devices == ("cpu",)
    assert plan_engines("auto", 2, lambda: 0, cores=2, environ={}).devices == ("cpu", "cpu")
    assert plan_engines("auto", None, lambda: 2, cores=8, environ={}) == EnginePlan(("gpu:0", "gpu:1"), 4)
    assert plan_engines("gpu", 1, lambda: 4, cores=8, environ={}).devices == ("gpu:0",)
    assert plan_engines("gpu:1", None, lambda: pytest.fail("gpu:N names its GPU"), environ={}).devices == ("gpu:1",)


def test_more_gpu_engines_than_gpus_is_refused_naming_both():
    with pytest.raises(EnginePlanError, match=r"^3 GPU engines were asked for .* but only 2 GPU\(s\) are visible"):
        plan_engines("auto", 3, lambda: 2, environ={})
    with pytest.raises(EnginePlanError, match="no GPU is visible"):
        plan_engines("gpu", None, lambda: 0, environ={})
    with pytest.raises(EnginePlanError, match="names one GPU"):
        plan_engines("gpu:0", 2, lambda: 2, environ={})


def test_gpus_are_counted_without_mxnet_here(tmp_path):
    marker = tmp_path / "ran"
    touch = [sys.executable, "-c", "open({!r}, 'w').write('1'); print(5)".format(str(marker))]
    assert engine_plan.gpu_count(nodes=[str(tmp_path / "nvidia[0-9]*")], command=touch) == 0
    assert not marker.exists()  # no NVIDIA node: no subprocess at all
    (tmp_path / "nvidia0").write_text("")
    nodes = [str(tmp_path / "nvidia[0-9]*")]
    assert engine_plan.gpu_count(nodes=nodes, command=touch) == 5 and marker.exists()
    assert engine_plan.gpu_count(nodes=nodes, command=[sys.executable, "-c", "raise SystemExit(3)"]) == 0
    slow = [sys.executable, "-c", "import time; time.sleep(10)"]
    assert engine_plan.gpu_count(nodes=nodes, command=slow, timeout=0.5) == 0


# --- the clients' choice -------------------------------------------------------------------------


def test_the_pool_takes_the_engine_with_fewest_in_flight_ties_round_robin():
    pool = EnginePool(["a", "b", "c"], start=1)
    assert [pool.acquire() for _ in range(3)] == [1, 2, 0]  # all idle: round-robin from the start
    pool.release(2)
    assert pool.acquire() == 2  # the only one with nothing in flight
    pool.release(0), pool.release(1), pool.release(2)
    assert pool.in_flight() == [0, 0, 0]
    assert [pool.acquire(), pool.release(0), pool.acquire()] == [0, None, 1]  # one at a time: round-robin
    assert pool.acquire(tried=[0, 1, 2]) is None


def test_the_setting_lists_sockets_joined_by_pathsep():
    assert socket_paths("/r/engine-0.sock") == ["/r/engine-0.sock"]
    assert socket_paths(os.pathsep.join(["/r/a.sock", "/r/b.sock"])) == ["/r/a.sock", "/r/b.sock"]
    assert EnginePool("/r/a.sock").paths == ("/r/a.sock",)


class FakeEngine:
    """A unix socket that answers every request with {"ok": true, "by": name}."""

    def __init__(self, path, name):
        self.path, self.name, self.calls = path, name, 0
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.bind(path)
        self.sock.listen(8)
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self):
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            with conn:
                if engine_protocol.receive(conn) is not None:
                    self.calls += 1
                    engine_protocol.send(conn, {"ok": True, "by": self.name})

    def close(self):
        """Stop listening (shutdown wakes the accept) and take the path away: connecting is refused."""
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.sock.close()
        os.unlink(self.path)


def test_a_refused_engine_is_skipped_and_none_left_is_503(tmp_path):
    dead = str(tmp_path / "dead.sock")
    socket.socket(socket.AF_UNIX, socket.SOCK_STREAM).bind(dead)  # a socket file nobody listens on: refused
    live = FakeEngine(str(tmp_path / "live.sock"), "live")
    try:
        pool = EnginePool([dead, str(tmp_path / "gone.sock"), live.path], start=0)
        assert [pool.call({"op": "info"}, 5)["by"] for _ in range(3)] == ["live"] * 3
        assert pool.in_flight() == [0, 0, 0]

        async def through_the_pool():
            async with pool.exchange() as engine:
                await engine.send({"op": "info"})
                return await engine.receive(5)

        loop = asyncio.new_event_loop()
        try:
            assert loop.run_until_complete(through_the_pool())["by"] == "live"
        finally:
            loop.close()
        assert pool.in_flight() == [0, 0, 0]
    finally:
        live.close()
    with pytest.raises(engine_protocol.EngineUnavailable) as raised:
        pool.call({"op": "info"}, 5)
    assert raised.value.status == 503 and pool.in_flight() == [0, 0, 0]


def test_stats_add_up_across_engines():
    per_engine = [{"ok": True, "engine": 0, "device": "cpu", "pid": 10, "steps": 5, "requests": 2, "max_rows": 4},
                  {"ok": True, "engine": 1, "device": "cpu", "pid": 11, "steps": 7, "requests": 1, "max_rows": 8},
                  {"ok": False, "engine": 2, "device": "cpu", "pid": 12, "error": "restarting"}]
    assert total_stats(per_engine) == {"steps": 12, "requests": 3, "max_rows": 8}


# --- the group, with the GPU count mocked --------------------------------------------------------


class FakePopen:
    """An engine process that is ready at once and never exits; remembers how it was started."""

    started = []

    def __init__(self, command, env=None, **_):
        self.command, self.env, self.pid = command, env, 10 ** 7 + len(FakePopen.started)
        self.stdout = io.BytesIO("engine ready on {} (pid {})\n".format(command[command.index("--socket") + 1],
                                                                       self.pid).encode())
        FakePopen.started.append(self)

    def poll(self):
        return None

    def wait(self, timeout=None):
        return 0


class QuietOutput:
    load_failure = None

    def follow(self, stream, on_line=None):
        for line in stream.read().decode().splitlines():
            on_line(line)


def test_a_mocked_two_gpu_plan_launches_an_engine_on_each_gpu(monkeypatch, tmp_path):
    monkeypatch.setattr(engine_plan, "gpu_count", lambda: 2)
    monkeypatch.setattr(engine_supervisor.subprocess, "Popen", FakePopen)
    monkeypatch.setattr(engine_supervisor, "stop_group", lambda proc, timeout: True)  # nothing real to stop
    monkeypatch.delenv(THREADS_ENV, raising=False)
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    FakePopen.started = []
    plan = plan_engines("auto", engines_setting(None, {}), cores=2)
    group = EngineGroup("/models/m", plan, str(tmp_path), "float16", {}, QuietOutput()).start(10)
    try:
        devices = [p.command[p.command.index("--device") + 1] for p in FakePopen.started]
        assert devices == ["gpu:0", "gpu:1"]
        assert [p.command[p.command.index("--socket") + 1] for p in FakePopen.started] == list(group.socket_paths)
        assert len(set(group.socket_paths)) == 2
        assert [p.env[THREADS_ENV] for p in FakePopen.started] == ["1", "1"]  # 2 cores split between them
        assert group.problem() is None and group.describe_pids().startswith("2 engine processes (pids ")
        group.supervisors[0]._ready.clear()  # one engine down: still serving
        assert group.problem() is None
        group.supervisors[1]._ready.clear()
        assert group.problem() == "every engine process is restarting"
        group.supervisors[1].failed = "engine 2 of 2 (gpu:1) exited 6 times in 300 s (last status -9)"
        assert group.failed == group.problem() == group.supervisors[1].failed
    finally:
        group.stop()


# --- real servers with two CPU engines -----------------------------------------------------------

ENGINE_READY = re.compile(r"engine ready on (\S+) \(pid (\d+)\)")
SHORT = {"inputs": "대한민국은", "parameters": {"max_new_tokens": 3}}
# 8 rows of 400 tokens: about a second of decoding on one thread even for the tiny model, so that every
# request is still in flight when an engine is killed; two per engine fit its 16 rows and cache.
LONG = {"inputs": "대한민국은", "parameters": {"max_new_tokens": 400, "min_new_tokens": 400, "num_return_sequences": 8,
                                            "do_sample": True, "seed": 1}}


def server_env(**extra):
    """The servers run the package under test (an absolute PYTHONPATH: they start in a temp directory)."""
    package_root = os.path.dirname(os.path.dirname(os.path.abspath(kogpt2_serving.__file__)))
    path = os.pathsep.join(p for p in [package_root, os.environ.get("PYTHONPATH", "")] if p)
    # conftest's configure_threads() set OMP_NUM_THREADS for this process: unset it for serve, whose
    # plan then splits the cores between the engines as it would in a container.
    return dict({"PYTHONPATH": path, "KOGPT2_WATCHDOG_SECONDS": "0", "OMP_NUM_THREADS": "", "KOGPT2_THREADS": ""},
                **extra)


def engines_of(server):
    """{socket path: pid of the engine serving it now}, in socket order."""
    found = {}
    for path, pid in ENGINE_READY.findall(server.log_text()):
        found[path] = int(pid)
    return dict(sorted(found.items()))


def requests_per_engine(server):
    return [engine_call(path, {"op": "stats"}, 10)["requests"] for path in engines_of(server)]


def alive(pid):
    try:
        with open("/proc/{}/stat".format(pid)) as f:
            return f.read().rsplit(")", 1)[1].split()[0] not in ("Z", "X")
    except OSError:
        return False


@pytest.fixture(scope="module")
def mms_two(tiny_model_dir):
    with ServeProcess(tiny_model_dir, ["--workers", "4", "--engines", "2"], env=server_env()) as server:
        yield server


@pytest.mark.serves
def test_two_cpu_engines_behind_mms_both_answer_and_both_get_requests(mms_two):
    log = mms_two.log_text(cli_only=True)
    assert "starting 2 engine(s) (cpu, cpu), {} thread(s) each".format(max(1, cpu_count() // 2)) in log
    assert len(engines_of(mms_two)) == 2
    before = requests_per_engine(mms_two)
    for _ in range(12):  # 4 light workers: one that serves two requests in a row sends them to both engines
        status, answer = mms_two.post_json(SHORT)
        assert status == 200, answer
    served = [after - b for after, b in zip(requests_per_engine(mms_two), before)]
    assert sum(served) == 12 and min(served) >= 1, served


def stats_per_engine(server):
    return [engine_call(path, {"op": "stats"}, 10) for path in engines_of(server)]


@pytest.mark.serves
def test_a_client_hang_up_is_cancelled_in_the_engine_that_holds_it(mms_two):
    before = stats_per_engine(mms_two)
    hang_up_once_decoding(mms_two.port, lambda: sum(s["steps"] for s in stats_per_engine(mms_two)))
    deadline = time.time() + 10
    while sum(s["cancelled"] for s in stats_per_engine(mms_two)) == sum(s["cancelled"] for s in before) \
            and time.time() < deadline:
        time.sleep(0.02)
    after = stats_per_engine(mms_two)
    holder = [i for i in range(2) if after[i]["requests"] > before[i]["requests"]]
    assert len(holder) == 1, (before, after)
    i = holder[0]
    assert [a["cancelled"] - b["cancelled"] for a, b in zip(after, before)] == [int(j == i) for j in range(2)]
    assert after[i]["steps"] - before[i]["steps"] < 79  # stopped early, not after the 80 steps it asked for


@pytest.mark.serves
def test_sigterm_stops_every_engine_behind_mms(mms_two):
    pids = list(engines_of(mms_two).values())
    assert len(pids) == 2 and all(alive(pid) for pid in pids)
    mms_two.stop()  # SIGTERM; raises if any process of the server's groups (both engines') is left
    assert mms_two.returncode == 0
    assert not [pid for pid in pids if alive(pid)]


@pytest.fixture(scope="module")
def native_two(tmp_path_factory):
    """Two engines (KOGPT2_ENGINES) behind the native frontend, on the tiny model with 1024 positions."""
    from kogpt2_serving.testing import make_test_model

    model_dir = make_test_model(str(tmp_path_factory.mktemp("long")), n_embd=64, n_head=4, n_positions=1024)
    env = server_env(KOGPT2_ENGINES="2", KOGPT2_MAX_REQUEST_TOKENS="3200")
    with ServeProcess(model_dir, ["--frontend", "native"], env=env) as server:
        yield server


@pytest.mark.serves
def test_two_cpu_engines_behind_the_native_frontend_take_turns(native_two):
    before = requests_per_engine(native_two)
    for _ in range(4):  # one pool, one request at a time: round-robin
        status, answer = native_two.post_json(SHORT)
        assert status == 200, answer
    served = [after - b for after, b in zip(requests_per_engine(native_two), before)]
    assert served == [2, 2], served


@pytest.mark.serves
def test_an_engine_killed_under_load_fails_only_its_own_requests(native_two):
    serve_pid = native_two.proc.pid
    (victim_socket, victim), (_, survivor) = engines_of(native_two).items()
    before = requests_per_engine(native_two)
    results = []
    clients = [threading.Thread(target=lambda: results.append(native_two.post_json(LONG))) for _ in range(4)]
    for client in clients:
        client.start()
    deadline = time.time() + 20
    while sum(requests_per_engine(native_two)) - sum(before) < 4 and time.time() < deadline:
        time.sleep(0.01)  # every request has reached an engine (least in flight: two each)
    on_victim = requests_per_engine(native_two)[0] - before[0]
    os.kill(victim, signal.SIGKILL)
    assert native_two.request("GET", "/ping")[0] == 200  # the other engine still serves
    for client in clients:
        client.join(60)
    statuses = sorted(status for status, _ in results)
    assert 1 <= on_victim <= 3 and statuses == [200] * (4 - on_victim) + [503] * on_victim, (on_victim, statuses)
    assert all(answer["error_type"] == "engine_unavailable" for status, answer in results if status == 503)
    for _ in range(4):  # the dead engine's socket refuses (or is gone while it reloads): the other answers
        assert native_two.post_json(SHORT)[0] == 200
    deadline = time.time() + 60
    while engines_of(native_two)[victim_socket] == victim and time.time() < deadline:
        time.sleep(0.2)
    assert engines_of(native_two)[victim_socket] != victim and alive(survivor)  # restarted alone
    restarted = requests_per_engine(native_two)[0]
    for _ in range(2):
        assert native_two.post_json(SHORT)[0] == 200
    assert requests_per_engine(native_two)[0] > restarted  # the new engine takes its turn again
    assert native_two.proc.pid == serve_pid and native_two.proc.poll() is None  # no server restart


@pytest.mark.serves
def test_sigterm_after_a_restart_leaves_no_engine(native_two):
    pids = list(engines_of(native_two).values())
    native_two.stop()
    assert native_two.returncode == 0 and not [pid for pid in pids if alive(pid)]


@pytest.mark.serves
@pytest.mark.parametrize("args, env, message", [
    ([], {"KOGPT2_ENGINES": "0"}, "error: KOGPT2_ENGINES must be auto or an integer in 1-64, got '0'"),
    (["--engines", "many"], {}, "error: --engines must be auto or an integer in 1-64, got 'many'"),
    pytest.param(["--engines", "2", "--device", "gpu"], {}, "error: --device gpu was asked for but no GPU is visible",
                 marks=pytest.mark.skipif(engine_plan.gpu_count() > 0, reason="this machine has a GPU")),
])
def test_a_bad_engines_setting_is_a_clear_start_up_error(tiny_model_dir, args, env, message):
    command = [sys.executable, "-m", "kogpt2_serving.cli", "serve", "--model-dir", tiny_model_dir,
               "--port", str(free_port())] + args
    done = subprocess.run(command, env=dict(os.environ, **server_env(**env)), stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, timeout=120)
    output = done.stdout.decode("utf-8", "replace")
    assert done.returncode == 1 and message in output and "Traceback" not in output, output
