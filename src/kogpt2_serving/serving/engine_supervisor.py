"""``serve``'s engine process: started before MMS, restarted when it dies, stopped last.

The engine runs in a session of its own (like MMS), so stopping it ends exactly its process
group. If it dies while serving (a crash, the OOM killer, a SIGKILL), the light workers answer
their requests in flight with 503 ``engine_unavailable`` (their socket to it closes) and the
supervisor starts a new one on the same socket; workers reconnect per request, so serving
resumes without restarting the server. More than MAX_RESTARTS restarts within
RESTART_WINDOW seconds mean it cannot stay up: the supervisor gives up and ``serve`` exits
non-zero, so the container is replaced.
"""
import logging
import os
import signal
import subprocess
import sys
import threading
import time

from ..errors import ServingError
from .engine_process import READY_LINE
from .process_group import signal_group, stop_group, wait_group_gone

log = logging.getLogger(__name__)

MAX_RESTARTS, RESTART_WINDOW = 5, 300.0


class EngineError(ServingError):
    kind = "engine_error"


class EngineSupervisor:
    def __init__(self, model_dir, socket_path, device, dtype, env, output, label="the engine process"):
        self.model_dir, self.socket_path = model_dir, socket_path
        self.device, self.dtype = device, dtype
        self.env = env
        self.output = output  # serving.server._Output: copies the engine's lines, remembers the load failure
        self.label = label  # how logs and errors name it: "engine 2 of 4 (gpu:1)" when serve runs several
        self.restarts = []  # times of restarts, for the give-up rule
        self.failed = None  # why the supervisor gave up
        self._proc = None
        self._ready = threading.Event()
        self._stopping = threading.Event()
        self._lock = threading.Lock()
        self._thread = None

    @property
    def pid(self):
        proc = self._proc
        return proc.pid if proc is not None else None

    @property
    def ready(self):
        return self._ready.is_set()

    def start(self, timeout, should_stop=None):
        """Start the engine and wait until it has loaded and warmed up its model (or should_stop())."""
        self.launch()
        return self.wait_started(timeout, should_stop)

    def launch(self):
        """Start the engine process without waiting (so that several engines load at once)."""
        self._launch()
        return self

    def wait_started(self, timeout, should_stop=None):
        """Wait until the launched engine is ready, then watch it (restart it when it dies)."""
        self._wait_ready(timeout, should_stop)
        self._thread = threading.Thread(target=self._watch, name="engine-supervisor", daemon=True)
        self._thread.start()
        return self

    def command(self):
        return [sys.executable, "-m", "kogpt2_serving.serving.engine_process", "--model-dir", self.model_dir,
                "--socket", self.socket_path, "--device", self.device, "--dtype", self.dtype]

    def _launch(self):
        self._ready.clear()
        with self._lock:
            if self._stopping.is_set():
                raise EngineError("the server is stopping")
            self._proc = subprocess.Popen(self.command(), env=self.env, stdin=subprocess.DEVNULL,
                                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
        self.output.follow(self._proc.stdout, on_line=self._on_line)
        log.info("engine process starting (pid %d) for %s: %s on %s", self._proc.pid, self.model_dir, self.label,
                 self.device)

    def _on_line(self, line):
        if line.startswith(READY_LINE):
            self._ready.set()

    def _wait_ready(self, timeout, should_stop=None):
        deadline = time.time() + timeout
        while not self._ready.wait(0.1):
            if should_stop is not None and should_stop():
                return
            code = self._proc.poll()
            if code is not None:
                cause = self.output.load_failure
                raise EngineError("{} exited with status {} during start-up{}".format(
                    self.label, code, ": " + cause if cause else " (see its output above)"))
            if time.time() > deadline:
                raise EngineError("{} was not ready after {:.0f} s".format(self.label, timeout))

    def _watch(self):
        while not self._stopping.is_set():
            code = self._proc.poll()
            if code is None:
                self._stopping.wait(0.2)
                continue
            if self._stopping.is_set():
                return
            now = time.time()
            self.restarts = [t for t in self.restarts if now - t < RESTART_WINDOW] + [now]
            if len(self.restarts) > MAX_RESTARTS:
                self.failed = "{} exited {} times in {:.0f} s (last status {})".format(
                    self.label, len(self.restarts), RESTART_WINDOW, code)
                log.error("%s: giving up", self.failed)
                return
            log.error("the engine process (pid %d) exited with status %s: %s's requests in flight were answered 503; "
                      "starting a new one", self._proc.pid, code, self.label)
            self._group_gone(self._proc)
            try:
                self._launch()
                self._wait_ready(600)
                log.info("engine process restarted (pid %d): %s", self._proc.pid, self.label)
            except EngineError as e:
                if self._stopping.is_set():
                    return
                log.error("restarting the engine failed: %s", e.message)

    def stop(self, timeout=10.0):
        self._stopping.set()
        with self._lock:
            proc = self._proc
        if proc is None:
            return
        stop_group(proc, timeout)
        if self._thread is not None:
            self._thread.join(5)
        if os.path.exists(self.socket_path):
            os.unlink(self.socket_path)

    @staticmethod
    def _group_gone(proc):
        """Whatever the dead engine left in its group (it has no children today) goes too."""
        signal_group(proc.pid, signal.SIGKILL)
        wait_group_gone(proc.pid, proc, 5.0)
