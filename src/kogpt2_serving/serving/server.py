"""Run the SageMaker serving stack locally: Multi Model Server + our handler service.

What a SageMaker container does on ``serve`` is
``sagemaker_inference.model_server.start_model_server(handler_service=...)``: write an MMS
properties file from the ``SAGEMAKER_*`` variables, put ``<model_dir>/code`` on PYTHONPATH,
``pip install`` its requirements.txt, run ``multi-model-server --start --model-store /
--mms-config <file> --log-config <toolkit log4j2.xml> --models model=<model_dir>``, then find
the MMS JVM with psutil and wait on it. :class:`ModelServer` takes the same steps with the
same properties (built from the toolkit's ``Environment`` and its default properties file)
and the same command line, but:

- **It launches MMS itself instead of calling start_model_server.** That function writes
  ``/etc/sagemaker-mms.properties`` (root), reads ``/opt/ml`` paths fixed at import time,
  and looks for "the" MMS JVM among *all* processes of the host: with a second MMS running
  (another developer, another test) it fails with "multiple mms model servers are not
  supported" or attaches to the wrong one. Here the launcher runs with ``--foreground`` as
  our child, in its own session, so its process group is exactly "this server" (launcher,
  JVM, Python workers) and :meth:`ModelServer.stop` ends it with ``killpg``, leaving
  nothing behind (SIGTERM to the toolkit's launcher only reaches the JVM and orphans the
  worker processes).
- Everything it writes lives in a private temp directory: the properties file, logs,
  metrics, MMS's pid file and the workers' unix sockets (``TMPDIR``; kept short, because a
  unix socket path must stay under ~100 characters), so servers do not collide.
- Readiness means the model is loaded: MMS answers ``/ping`` before workers have loaded
  anything, and MMS swallows exceptions from a handler's ``initialize``. So
  :meth:`ModelServer.wait_ready` waits until every worker is READY in the management API
  and a real one-token generation through ``/invocations`` succeeds; a worker whose model
  failed to load answers 500 ``model_error``, which ends start-up with that error.
- **MMS listens only on unix sockets in that directory** (0700): inference and management
  each on its own. Clients reach :class:`~kogpt2_serving.serving.gateway.Gateway` on host:port, which
  answers only ``GET /ping`` and ``POST /invocations`` and puts MMS's own errors in our
  schema. The management API (which registers any directory or URL as a model and runs its
  code) is reachable by nobody but this process's user, and the model store is the model's
  own directory.
- With ``batch_size`` > 1 the model is not loaded from the command line (MMS gives such
  models batch size 1) but registered through the management API with ``batch_size`` and
  ``max_batch_delay``, so MMS hands the handler several requests at once. MMS serves such a
  model at ``/predictions/model`` only; the gateway forwards ``/invocations`` there.

MMS rejects ports >= 32767 (and so the OS's ephemeral range); :func:`check_port` says so
before starting. ``SAGEMAKER_*`` variables keep their meaning (timeouts, payload size,
vmargs, default Accept, user program), with explicit arguments taking precedence.
"""
import json
import logging
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from typing import NamedTuple, Optional
from urllib.parse import urlencode

from ..errors import ServingError
from ..files.model_dir import find_model_files
from ..model.device import cpu_count, threads_per_worker
from ..settings import (BIND_TO_PORT_ENV, DEVICE_ENV, DTYPE_ENV, ENGINE_SOCKET_ENV, OMP_THREADS_ENV, THREADS_ENV,
                        WORKERS_ENV, drain_seconds, engine_limits, explicit_threads)
from . import local_http
from .engine_group import EngineGroup, total_stats
from .engine_plan import describe, oversubscribed, plan_engines
from .gateway import FRONTEND_KINDS, Gateway
from .mms_config import MODEL_NAME, SERVICE, Sockets, max_request_size, mms_command, mms_properties, response_timeout
from .process_group import stop_group
from .watchdog import PROBE, Watchdog

log = logging.getLogger(__name__)

MAX_PORT = 32766  # the MMS frontend rejects 32767 and above
SOCKET_DIR_LIMIT = 80  # TMPDIR + "/.mms.sock.9000" must fit a unix socket path (108 bytes)
WATCHDOG_MARGIN = 5.0  # s past the request timeout before a probe counts as unanswered
NOT_READY = (404, 500, 502, 503, 504, 507)  # MMS: model or worker not there (yet)
LOAD_FAILED = re.compile(r"loading the model from .*? failed: (.*)$")  # handler_service's log line


class ServerError(ServingError):
    kind = "server_error"


class ServerConfig(NamedTuple):
    model_dir: str
    host: str = "127.0.0.1"
    port: int = 8080
    workers: int = 1
    device: str = "auto"
    dtype: str = "float32"  # float16 (GPU) or bfloat16 (CPU weights) also
    batch_size: int = 1  # > 1: MMS batching (registered through the management API)
    max_batch_delay: int = 50  # ms MMS waits to fill a batch
    log_file: Optional[str] = None  # None: MMS logs to this process's stdout
    startup_timeout: Optional[float] = None  # None: SAGEMAKER_STARTUP_TIMEOUT (600 s)
    install_requirements: bool = False  # pip install <model_dir>/code/requirements.txt first
    engine: bool = False  # engine processes with continuous batching; light MMS workers
    engines: Optional[int] = None  # how many engine processes; None: one per visible GPU, else one (engine_plan)
    watchdog_interval: float = 0.0  # s between the watchdog's probes; 0: no watchdog
    frontend: str = "mms"  # or "native": aiohttp in front of the engine, streaming (serving.native_server)


def cannot_listen(config, error):
    """The start-up error for a public address that cannot be bound."""
    reason = os.strerror(error.errno) if error.errno else str(error)  # asyncio wraps the OS's own words
    return ServerError("cannot listen on {}:{}: {}".format(config.host, config.port, reason))


def in_sagemaker_container():
    """SageMaker sets SAGEMAKER_BIND_TO_PORT (or mounts /opt/ml/model): listen on all interfaces."""
    return bool(os.environ.get(BIND_TO_PORT_ENV)) or os.path.isdir("/opt/ml/model")


def check_port(port):
    if not 1 <= port <= MAX_PORT:
        raise ServerError("port {} is not usable: Multi Model Server only accepts ports 1-{} (it rejects 32767 "
                          "and above); pick e.g. 8080 or one in 20000-{}".format(port, MAX_PORT, MAX_PORT))


class ModelServer:
    """One Multi Model Server serving one model directory; ``with ModelServer(cfg) as s:``
    starts it, waits until the model answers, and stops it (whole process group) on exit."""

    def __init__(self, config):
        self.config = config
        self.run_dir = None
        self.sockets = None
        self._proc = None
        self._gateway = None
        self._output = None
        self._engine = None
        self._watchdog = None
        self._ready = False

    @property
    def url(self):
        host = "127.0.0.1" if self.config.host in ("0.0.0.0", "") else self.config.host
        return "http://{}:{}".format(host, self.config.port)

    inference_path = "/invocations"  # batched or not: the gateway knows where MMS serves the model

    @property
    def _mms_path(self):
        return "/invocations" if self.config.batch_size <= 1 else "/predictions/" + MODEL_NAME

    @property
    def pid(self):
        return self._proc.pid if self._proc else None

    def __enter__(self):
        try:
            self.start()
            self.wait_ready()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc):
        self.stop()

    def start(self, should_stop=None):
        """Launch the engine (if any; waits until its model is loaded) and MMS (does not wait for
        the workers; see wait_ready)."""
        config = self.config
        check_port(config.port)
        find_model_files(config.model_dir)  # a clear error now rather than a worker log line later
        _check_runtime()
        from sagemaker_inference import environment as toolkit_environment

        toolkit_env = toolkit_environment.Environment()
        self.run_dir = tempfile.mkdtemp(prefix="kgs-", dir=_short_temp_root())  # mode 0700
        self.sockets = Sockets.in_dir(self.run_dir)
        try:  # binding the public address first: a taken port fails before anything is installed or launched
            self._gateway = Gateway(config.host, config.port, self.sockets.inference, self._mms_path,
                                    max_body=max_request_size(toolkit_env),
                                    timeout=response_timeout(config, toolkit_env) + 30,
                                    health=self._health, on_client_gone=self._client_gone).start()
        except OSError as e:
            raise cannot_listen(config, e)
        properties = os.path.join(self.run_dir, "mms.properties")
        with open(properties, "w") as f:
            f.write(mms_properties(config, self.sockets, toolkit_env))
        env = self._environment()
        if config.install_requirements:
            _install_requirements(config.model_dir, env)
        self._output = _Output(config.log_file)
        if config.engine:
            self._start_engines(self._engine_environment(env), should_stop)
            if should_stop is not None and should_stop():
                return self  # stopped while the engines loaded: no MMS to start
            env = self._light_worker_environment(env)
        self._proc = subprocess.Popen(mms_command(config, properties), env=env, cwd=self.run_dir,
                                      stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                      start_new_session=True)
        self._output.follow(self._proc.stdout)
        log.info("Multi Model Server starting (pid %d) for %s on %s, %d worker(s), %s", self._proc.pid,
                 config.model_dir, self.url, config.workers,
                 "light: generation runs in " + self._engine.describe_pids() if config.engine
                 else _threads_note(config.workers))
        log.info("only GET /ping and POST /invocations are served on %s; Multi Model Server listens on unix "
                 "sockets in %s (management API: %s)", self.url, self.run_dir, self.sockets.management)
        if not config.engine:
            _warn_if_oversubscribed(config.workers)
        if config.batch_size > 1:
            log.warning("MMS batching (batch_size %d) is experimental: MMS 1.1 can drop a worker's connection when "
                        "a multi-request response arrives in pieces (docs/serving.md)", config.batch_size)
        return self

    def _environment(self):
        config = self.config
        env = dict(os.environ)
        logs = os.path.join(self.run_dir, "logs")
        os.makedirs(logs)
        code_dir = os.path.join(os.path.abspath(config.model_dir), "code")
        env.update({
            "TMPDIR": self.run_dir, "TEMP": self.run_dir,  # MMS pid file and worker sockets
            "LOG_LOCATION": logs, "METRICS_LOCATION": logs,
            "PYTHONPATH": code_dir + os.pathsep + env.get("PYTHONPATH", ""),  # as the toolkit does
            WORKERS_ENV: str(config.workers),  # model_fn sizes each worker's threads from it
            DEVICE_ENV: config.device,
            DTYPE_ENV: config.dtype,
            BIND_TO_PORT_ENV: str(config.port),
        })
        if not explicit_threads(env):
            # The MMS worker sets OMP_NUM_THREADS=1 when it is unset, which model_fn could not
            # tell from an operator's choice: pass cores // workers explicitly.
            env[THREADS_ENV] = str(threads_per_worker(config.workers))
        # libgomp's spin before idle threads sleep stays at its default (GOMP_SPINCOUNT: see
        # docs/serving.md, "Performance", for what a shorter spin cost after idle pauses).
        return env

    def _start_engines(self, env, should_stop):
        """Plan the engines (how many, which devices, threads each), start them all and wait
        until every one has loaded its model."""
        config = self.config
        plan = plan_engines(config.device, config.engines)
        log.info("starting %s", describe(plan))
        if oversubscribed(plan):
            log.warning("%s", oversubscribed(plan))
        self._engine = EngineGroup(os.path.abspath(config.model_dir), plan, self.run_dir, config.dtype, env,
                                   self._output)
        self._engine.start(self._startup_timeout(), should_stop)

    def _engine_environment(self, env):
        """The engine computes with the whole machine unless the operator chose its threads."""
        engine_env = dict(env)
        if not explicit_threads(os.environ):
            engine_env.pop(THREADS_ENV, None)
        return engine_env

    def _light_worker_environment(self, env):
        """Light workers compute nothing: one thread each, and the engines' addresses."""
        light = dict(env)
        light.update({ENGINE_SOCKET_ENV: os.pathsep.join(self._engine.socket_paths), THREADS_ENV: "1",
                      OMP_THREADS_ENV: "1"})
        return light

    def _start_watchdog(self):
        if self.config.watchdog_interval > 0 and self._watchdog is None:
            timeout = engine_limits().request_timeout + WATCHDOG_MARGIN
            self._watchdog = Watchdog(self.invoke, self.config.watchdog_interval, timeout).start()

    def _health(self):
        """None when /ping may say 200, else why not (the gateway answers 503 with it)."""
        if not self._ready:
            return "the model is not loaded yet"
        if self.poll() is not None:
            return "Multi Model Server is not running"
        if self._engine is not None and self._engine.problem():
            return self._engine.problem()
        if self._watchdog is not None and self._watchdog.problem:
            return self._watchdog.problem
        return None

    def failure(self):
        """Why the server cannot go on (serve then exits non-zero), or None."""
        if self._engine is not None and self._engine.failed:
            return self._engine.failed
        if self._watchdog is not None and self._watchdog.wedged.is_set():
            return "the watchdog found the server wedged: " + self._watchdog.problem
        return None

    def _client_gone(self, request_id):
        """The gateway's client hung up: the engine holding its request stops spending steps on it."""
        if self._engine is not None:
            threading.Thread(target=self._engine.cancel, args=(request_id,), name="cancel", daemon=True).start()

    def engine_stats(self):
        """The engines' scheduler counters added up (steps, rows per step, joins, ...; max_rows the
        largest); {} without an engine."""
        return total_stats(self.engines_stats())

    def engines_stats(self):
        """Each engine's counters with its index, device and pid ([] without an engine)."""
        return self._engine.stats() if self._engine is not None else []

    @property
    def engine_pid(self):
        """The (first) engine's pid."""
        return self._engine.pid if self._engine is not None else None

    @property
    def engine_pids(self):
        return self._engine.pids if self._engine is not None else []

    def drain(self, grace):
        """Answer new requests 503 and give those in flight up to `grace` s; True if all finished."""
        if self._gateway is None:
            return True
        in_flight = self._gateway.in_flight
        if in_flight:
            log.info("draining: waiting up to %.0f s for %d request(s) in flight", grace, in_flight)
        done = self._gateway.drain(grace)
        if not done:
            log.warning("draining: %d request(s) still in flight after %.0f s", self._gateway.in_flight, grace)
        return done

    def _startup_timeout(self):
        return self.config.startup_timeout or _toolkit_startup_timeout()

    def wait_ready(self, timeout=None, should_stop=None):
        """Block until the model answers; False if should_stop() became true first."""
        timeout = timeout or self._startup_timeout()
        deadline = time.time() + timeout
        registered = self.config.batch_size <= 1
        while True:
            if should_stop and should_stop():
                return False
            code = self._proc.poll()
            if code is not None:
                raise ServerError("Multi Model Server exited with status {} during start-up{}".format(
                    code, self._log_tail()))
            if time.time() > deadline:
                raise ServerError("the model was not ready after {:.0f} s{}".format(timeout, self._log_tail()))
            if not registered:
                registered = self._register()
            elif self._workers_ready() and self._probe():
                self._ready = True
                self._start_watchdog()
                return True
            time.sleep(0.25)

    def _probe(self):
        """One real generation: True once the handler answered it (the model is loaded)."""
        status, body = self.invoke(json.dumps(PROBE).encode("utf-8"), "application/json", timeout=60)
        if status == 500 and b"model_error" in body:
            cause = self._output.load_failure if self._output else None
            raise ServerError("the model failed to load in the worker{}{}".format(
                ": " + cause if cause else "", self._log_tail()))
        if status is None or (status in NOT_READY and not _from_handler(body)):
            return False
        if status != 200:  # e.g. a user's input_fn that does not take our probe: still loaded
            log.warning("the handler answered the readiness probe with HTTP %d: %s", status,
                        body.decode("utf-8", "replace")[:200])
        log.info("model ready: POST %s%s", self.url, self.inference_path)
        log.info("try it: %s", curl_example(self.url + self.inference_path))
        return True

    def invoke(self, body, content_type="application/json", accept=None, timeout=120):
        """POST /invocations -> (status, body bytes); (None, b"") when nothing answers."""
        headers = {"Content-Type": content_type}
        if accept:
            headers["Accept"] = accept
        return local_http.request(self.url, "POST", self.inference_path, body, headers, timeout)

    def management(self, method, path, timeout=10):
        """A request to MMS's management API on its unix socket -> (status, body)."""
        return local_http.request(local_http.UNIX + self.sockets.management, method, path, b"", {}, timeout)

    def _register(self):
        query = urlencode({"url": ".", "model_name": MODEL_NAME,
                           "handler": SERVICE, "batch_size": self.config.batch_size,
                           "max_batch_delay": self.config.max_batch_delay,
                           "initial_workers": self.config.workers, "synchronous": "false"})
        status, body = self.management("POST", "/models?" + query)
        if status is None:
            return False  # not listening yet
        if status >= 300:
            raise ServerError("registering the model with batch_size {} failed: HTTP {} {}".format(
                self.config.batch_size, status, body.decode("utf-8", "replace")[:300]))
        log.info("registered %s with batch_size %d, max_batch_delay %d ms", self.config.model_dir,
                 self.config.batch_size, self.config.max_batch_delay)
        return True

    def workers(self):
        """The management API's worker list for the model ([] when unknown)."""
        status, body = self.management("GET", "/models/" + MODEL_NAME, 5)
        if status != 200:
            return []
        described = json.loads(body.decode("utf-8"))
        if isinstance(described, list):
            described = described[0] if described else {}
        return described.get("workers", [])

    def _workers_ready(self):
        workers = self.workers()
        return len(workers) >= self.config.workers and all(w.get("status") == "READY" for w in workers)

    def poll(self):
        """None while the server runs, else the launcher's exit status."""
        return self._proc.poll() if self._proc else 0

    def stop(self, timeout=15.0):
        """SIGTERM the server's process groups (MMS, then the engine), SIGKILL what is left after
        `timeout`; idempotent."""
        self._ready = False
        if self._watchdog is not None:
            self._watchdog.stop()
            self._watchdog = None
        if self._proc is not None:
            if not stop_group(self._proc, timeout):
                log.warning("server processes were still running after %.0f s: killed them", timeout)
            self._proc = None
        if self._engine is not None:
            self._engine.stop(timeout)
            self._engine = None
        if self._gateway is not None:
            self._gateway.stop()
            self._gateway = None
        if self._output is not None:
            self._output.close()
            self._output = None
        if self.run_dir:
            shutil.rmtree(self.run_dir, ignore_errors=True)
            self.run_dir = None

    def _log_tail(self, lines=30):
        if not self.config.log_file:
            return " (see the Multi Model Server output above)"
        try:
            with open(self.config.log_file, "rb") as f:
                tail = f.read().decode("utf-8", "replace").splitlines()[-lines:]
        except OSError:
            return ""
        return "; last lines of {}:\n{}".format(self.config.log_file, "\n".join(tail))


def serve(config):
    """Run until SIGINT/SIGTERM; returns the exit status. Logs where it listens."""
    stop = threading.Event()
    handlers = {sig: signal.signal(sig, lambda signum, frame: stop.set()) for sig in (signal.SIGINT, signal.SIGTERM)}
    server = make_server(config)
    try:
        server.start(should_stop=stop.is_set)
        if stop.is_set() or not server.wait_ready(should_stop=stop.is_set):
            log.info("stopping before the model was ready")
            return 0
        log.info("serving %s at %s (POST %s, GET /ping); Ctrl-C or SIGTERM stops it",
                 config.model_dir, server.url, server.inference_path)
        while not stop.wait(0.5):
            if server.poll() is not None:
                log.error("Multi Model Server exited with status %s", server.poll())
                return 1
            failure = server.failure()
            if failure:
                log.error("%s: exiting so that the container is replaced", failure)
                return 1
        log.info("stopping")
        server.drain(drain_seconds())
        return 0
    finally:
        server.stop()
        for sig, previous in handlers.items():
            signal.signal(sig, previous)


def make_server(config):
    """The server for config.frontend: Multi Model Server (behind the gateway) or the native one."""
    if config.frontend == "native":
        from .native_server import NativeServer

        return NativeServer(config)
    return ModelServer(config)


class _Output:
    """The output of MMS (JVM and workers) and of the engine process, copied line by line to
    the log file or our stdout, and read for a load-failure line (the handler service's or the
    engine's), so a start-up error can name its cause."""

    def __init__(self, log_file):
        self._file = open(log_file, "ab") if log_file else None
        self._threads = []
        self._lock = threading.Lock()
        self.load_failure = None

    def follow(self, stream, on_line=None):
        thread = threading.Thread(target=self._copy, args=(stream, on_line), name="output", daemon=True)
        self._threads = [t for t in self._threads if t.is_alive()] + [thread]
        thread.start()

    def _copy(self, stream, on_line):
        target = self._file or getattr(sys.stdout, "buffer", None)
        for line in iter(stream.readline, b""):
            text = line.decode("utf-8", "replace").rstrip()
            match = LOAD_FAILED.search(text)
            if match and self.load_failure is None:
                self.load_failure = match.group(1)
            if on_line is not None:
                on_line(text)
            if target is not None:
                try:
                    with self._lock:
                        target.write(line)
                        target.flush()
                except (OSError, ValueError):  # stdout gone: keep draining, or MMS would block on a full pipe
                    target = None
        stream.close()

    def close(self):
        for thread in self._threads:
            thread.join(5)
        if self._file is not None:
            self._file.close()


def _from_handler(body):
    """Whether an error body is one our handler service wrote ({"error", "error_type"}), not
    one the gateway wrote for MMS (not running, worker died, queue full, ...)."""
    try:
        answer = json.loads(body.decode("utf-8"))
    except ValueError:
        return False
    return isinstance(answer, dict) and "error_type" in answer and answer["error_type"] not in FRONTEND_KINDS


def _check_runtime():
    try:
        import mms  # noqa: F401
        import sagemaker_inference  # noqa: F401
    except ImportError as e:
        raise ServerError("the server needs multi-model-server and sagemaker-inference ({}); install "
                          "kogpt2-serving[server]".format(e))
    java_home = os.environ.get("JAVA_HOME")
    java = os.path.join(java_home, "bin", "java") if java_home else shutil.which("java")
    if not java or not os.path.exists(java):
        raise ServerError("Multi Model Server needs a Java runtime (8 or newer): install one (e.g. apt-get install "
                          "default-jre-headless) or set JAVA_HOME")


def curl_example(url, prompt="대한민국은"):
    """A ready-to-paste request for the log."""
    body = json.dumps({"inputs": prompt, "parameters": {"max_new_tokens": 32, "no_repeat_ngram_size": 3}},
                      ensure_ascii=False)
    return "curl -s {} -H 'Content-Type: application/json' -d '{}'".format(url.replace("0.0.0.0", "127.0.0.1"), body)


def _install_requirements(model_dir, env):
    requirements = os.path.join(model_dir, "code", "requirements.txt")
    if os.path.exists(requirements):
        log.info("installing packages from %s", requirements)
        if subprocess.call([sys.executable, "-m", "pip", "install", "-r", requirements], env=env) != 0:
            raise ServerError("pip install -r {} failed".format(requirements))


def _short_temp_root():
    root = tempfile.gettempdir()
    return root if len(root) <= SOCKET_DIR_LIMIT - 20 else "/tmp"


def _toolkit_startup_timeout():
    from sagemaker_inference import environment

    return environment.Environment().startup_timeout


def _threads_per_worker_set(workers):
    """Each worker's OpenMP threads as _environment passes them (None if not a plain count)."""
    explicit = explicit_threads()
    if not explicit:
        return threads_per_worker(workers)
    return int(explicit) if explicit.isdecimal() else None


def _threads_note(workers):
    threads = _threads_per_worker_set(workers)
    return "{} CPU thread(s) per worker on {} core(s)".format(threads or "?", cpu_count())


def _warn_if_oversubscribed(workers):
    threads, cores = _threads_per_worker_set(workers), cpu_count()
    if threads and workers * threads > cores:
        log.warning("%d workers x %d threads (%s / OMP_NUM_THREADS) exceed the %d cores: OpenMP teams that share "
                    "cores slow each other down many times over (measured 40x); unset it or lower --workers",
                    workers, threads, THREADS_ENV, cores)
