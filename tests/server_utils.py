"""Start `kogpt2-serving serve` for a test, talk to it over loopback HTTP, and stop it.

Reusable outside this test suite (e.g. a container smoke test)::

    from server_utils import ServeProcess

    with ServeProcess(model_dir, extra_args=["--workers", "1"]) as server:
        status, reason, headers, body = server.post(b'"hello"', "application/json")
        assert status == 200, server.log_text()
    # here: the serve process has exited on SIGTERM and no process of its server is left

`ServeProcess` runs the real CLI (`python -m kogpt2_serving.cli serve`) in its own session
on a free port in 20000-32766 (MMS rejects 32767 and above), with a temp directory for its
log, and waits for the line the CLI prints once the model has answered a real request.
`stop()` sends SIGTERM (what SageMaker and `docker stop` send), waits for the CLI to exit,
and checks that no process of the CLI's or the Multi Model Server's process group is left;
anything left is killed and reported as an error. `command` can replace the CLI, e.g. with
`docker run ...` for a container, as long as it prints the same readiness line.
"""
import http.client
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time

from kogpt2_serving.serving import local_http
from kogpt2_serving.testing import free_port  # noqa: F401  (tests import it from here)

READY = re.compile(r"serving .* at (http://\S+) \(POST (\S+),")
ENGINE_GROUP = re.compile(r"engine process starting \(pid (\d+)\)")
MMS_GROUP = re.compile(r"Multi Model Server starting \(pid (\d+)\)")
MANAGEMENT = re.compile(r"\(management API: (\S+)\)")
ENGINE_SOCKET = re.compile(r"engine ready on (\S+) \(pid")


class ServeProcess:
    def __init__(self, model_dir, extra_args=(), env=None, port=None, startup_timeout=180.0, command=None):
        self.model_dir = model_dir
        self.port = port or free_port()
        self.extra_args = list(extra_args)
        self.env = env
        self.startup_timeout = startup_timeout
        self.command = command
        self.work_dir = None
        self.proc = None
        self.mms_group = None
        self.engine_groups = set()  # every engine process started (restarts too): each leads its own group
        self.inference_path = "/invocations"  # from the readiness line
        self.management_socket = None  # MMS's management API: a unix socket, from the log
        self.returncode = None

    # --- life cycle --------------------------------------------------------------------------

    def __enter__(self):
        self.start()
        try:
            self.wait_ready()
        except BaseException:
            self.stop(check=False)
            raise
        return self

    def __exit__(self, *exc):
        self.stop(check=exc[0] is None)

    def start(self):
        self.work_dir = tempfile.mkdtemp(prefix="kgs-test-")
        command = self.command or [
            sys.executable, "-m", "kogpt2_serving.cli", "serve", "--model-dir", self.model_dir,
            "--port", str(self.port), "--log-file", os.path.join(self.work_dir, "mms.log")] + self.extra_args
        env = dict(os.environ, PYTHONUNBUFFERED="1", **(self.env or {}))
        with open(self.cli_log, "wb") as out:
            self.proc = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                         env=env, cwd=self.work_dir, start_new_session=True)
        return self

    def wait_ready(self):
        deadline = time.time() + self.startup_timeout
        while time.time() < deadline:
            text = self.log_text(cli_only=True)
            self._note_engines(text)
            if self.mms_group is None and MMS_GROUP.search(text):
                self.mms_group = int(MMS_GROUP.search(text).group(1))
            if self.management_socket is None and MANAGEMENT.search(text):
                self.management_socket = MANAGEMENT.search(text).group(1)
            if READY.search(text):
                self.inference_path = READY.search(text).group(2)
                return
            if self.proc.poll() is not None:
                raise RuntimeError("serve exited with {} before it was ready:\n{}".format(
                    self.proc.returncode, self.log_text()))
            time.sleep(0.1)
        raise RuntimeError("serve not ready after {:.0f} s:\n{}".format(self.startup_timeout, self.log_text()))

    def stop(self, check=True, timeout=30.0, signum=signal.SIGTERM):
        """SIGTERM (or `signum`) the CLI, wait for it; then nothing of the server may be left
        running. Sets `returncode` to the CLI's exit status."""
        if self.proc is None:
            return
        leftovers = []
        try:
            if self.proc.poll() is None:
                os.kill(self.proc.pid, signum)
                try:
                    self.proc.wait(timeout)
                except subprocess.TimeoutExpired:
                    leftovers.append(self.proc.pid)
            deadline = time.time() + 5
            while time.time() < deadline and self.group_members():
                time.sleep(0.1)
            leftovers += self.group_members()
        finally:
            for group in [self.proc.pid, self.mms_group] + sorted(self.engine_groups):
                _killpg(group, signal.SIGKILL)
            self.returncode = self.proc.wait()
            log = self.log_text()
            self.proc = None
            shutil.rmtree(self.work_dir, ignore_errors=True)
        if check and leftovers:
            raise AssertionError("processes left running after SIGTERM: {}\n{}".format(sorted(set(leftovers)), log))

    def group_members(self):
        """Live pids in the CLI's, the MMS server's or an engine's process group."""
        self._note_engines(self.log_text(cli_only=True))
        groups = {g for g in (self.proc.pid if self.proc else None, self.mms_group) if g} | self.engine_groups
        return [pid for pid, group in _processes() if group in groups]

    def _note_engines(self, text):
        self.engine_groups.update(int(pid) for pid in ENGINE_GROUP.findall(text))

    @property
    def engine_pid(self):
        """The engine process running now (the last one started), or None."""
        pids = ENGINE_GROUP.findall(self.log_text(cli_only=True))
        return int(pids[-1]) if pids else None

    # --- HTTP --------------------------------------------------------------------------------

    @property
    def url(self):
        return "http://127.0.0.1:{}".format(self.port)

    def request(self, method, path, body=None, headers=None, timeout=120):
        """-> (status, reason, headers (lower-case names), body bytes)."""
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout)
        try:
            conn.request(method, path, body=body, headers=headers or {})
            response = conn.getresponse()
            return (response.status, response.reason, {k.lower(): v for k, v in response.getheaders()},
                    response.read())
        finally:
            conn.close()

    def post(self, body, content_type="application/json", accept=None, timeout=120):
        if isinstance(body, str):
            body = body.encode("utf-8")
        headers = {}
        if content_type is not None:
            headers["Content-Type"] = content_type
        if accept is not None:
            headers["Accept"] = accept
        return self.request("POST", self.inference_path, body, headers, timeout)

    def post_json(self, value, accept=None):
        """POST a JSON value; -> (status, parsed JSON body)."""
        status, _, _, body = self.post(json.dumps(value, ensure_ascii=False), "application/json", accept)
        return status, json.loads(body.decode("utf-8"))

    def management(self, method, path):
        """MMS's management API, on its unix socket -> (status, body)."""
        return local_http.request(local_http.UNIX + self.management_socket, method, path)

    def described_model(self):
        """The management API's description of the model (batch size, workers, ...)."""
        status, body = self.management("GET", "/models/model")
        assert status == 200, (status, body)
        described = json.loads(body.decode("utf-8"))
        return described[0] if isinstance(described, list) else described

    def engine_stats(self):
        """The engine's scheduler counters (from its socket, which its readiness line names)."""
        from kogpt2_serving.serving.engine_client import engine_call

        sockets = ENGINE_SOCKET.findall(self.log_text())
        assert sockets, "no engine in this server's log"
        return engine_call(sockets[-1], {"op": "stats"}, 10)

    def workers(self):
        """(id, start time, status) of each MMS worker: a restarted worker gets a new id/start time."""
        described = self.described_model()
        return sorted((w.get("id"), w.get("startTime"), w.get("status")) for w in described.get("workers", []))

    # --- logs --------------------------------------------------------------------------------

    @property
    def cli_log(self):
        return os.path.join(self.work_dir, "serve.log")

    def log_text(self, cli_only=False):
        names = ["serve.log"] if cli_only else ["serve.log", "mms.log"]
        parts = []
        for name in names:
            try:
                with open(os.path.join(self.work_dir, name), "rb") as f:
                    parts.append(f.read().decode("utf-8", "replace"))
            except OSError:
                pass
        return "\n".join(parts)


# 16 sampled rows of 80 tokens each: long enough that a hang-up lands mid-generation.
LONG_REQUEST = {"inputs": "대한민국은", "parameters": {"max_new_tokens": 80, "min_new_tokens": 80,
                                                     "num_return_sequences": 16, "do_sample": True, "seed": 1}}


def hang_up_once_decoding(port, steps_taken, timeout=10.0):
    """Send LONG_REQUEST to POST /invocations on a raw socket, wait until `steps_taken()` (the
    engines' decode steps so far) moves, then close the socket without reading the answer."""
    before = steps_taken()
    body = json.dumps(LONG_REQUEST).encode("utf-8")
    sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    sock.sendall(b"POST /invocations HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                 b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body)
    deadline = time.time() + timeout
    while steps_taken() == before and time.time() < deadline:
        time.sleep(0.005)  # decoding has begun
    sock.close()


def _processes():
    """(pid, process group) of every live (non-zombie) process, from /proc."""
    found = []
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                with open("/proc/{}/stat".format(name)) as f:
                    fields = f.read().rsplit(")", 1)[1].split()
            except (OSError, IndexError):
                continue
            if fields[0] not in ("Z", "X"):
                found.append((int(name), int(fields[2])))
    return found


def _killpg(group, signum):
    if group:
        try:
            os.killpg(group, signum)
        except (ProcessLookupError, PermissionError):
            pass
