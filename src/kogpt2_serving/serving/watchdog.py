"""``serve``'s watchdog: a real generation through the public address, every few seconds.

Multi Model Server answers its own ``/ping`` with 200 whatever state its workers are in, and a
worker that died badly can leave MMS waiting minutes before it retries it ("Retry worker ...
in 377 seconds"), with every request hanging meanwhile. So the watchdog sends what a client
sends, a one-token ``POST /invocations``, and counts as a failure only what says the serving
path is broken: no answer within the request timeout (plus a margin), or a frontend error
(worker died, MMS not answering). A busy server (503 queue full) or an engine restart (which
the engine supervisor handles) is not a failure. After FAILURES in a row the server is wedged:
``serve`` exits non-zero so the container is replaced, and ``/ping`` says 503 from the first
failure on.
"""
import json
import logging
import threading

log = logging.getLogger(__name__)

PROBE = {"inputs": "안녕", "parameters": {"max_new_tokens": 1}}  # also serve's readiness probe
FAILURES = 3
# A user's input_fn may answer the probe with its own 4xx or 500: that is not a broken path.
BROKEN = frozenset(["worker_died", "timeout", "server_unavailable", "model_server_error"])


class Watchdog:
    def __init__(self, invoke, interval, timeout):
        self.invoke = invoke  # (body, content type, timeout=) -> (status, body)
        self.interval, self.timeout = interval, timeout
        self.failures = 0
        self.problem = None  # why the last probe failed; None while healthy
        self.wedged = threading.Event()
        self._stop = threading.Event()
        self._thread = None

    def start(self):
        self._thread = threading.Thread(target=self._run, name="watchdog", daemon=True)
        self._thread.start()
        return self

    def stop(self):
        self._stop.set()
        if self._thread is not None:
            self._thread.join(self.timeout + 5)

    def _run(self):
        while not self._stop.wait(self.interval):
            problem = self.check()
            if problem is None:
                if self.failures:
                    log.info("watchdog: the server answers again")
                self.failures, self.problem = 0, None
                continue
            self.failures += 1
            self.problem = "the serving path is failing ({} of {} probes): {}".format(self.failures, FAILURES, problem)
            log.error("watchdog: %s", self.problem)
            if self.failures >= FAILURES:
                self.wedged.set()
                return

    def check(self):
        """None if a probe generation went through (or the server is only busy), else why not."""
        status, body = self.invoke(json.dumps(PROBE).encode("utf-8"), "application/json", timeout=self.timeout)
        if status is None:
            return "no answer to POST /invocations within {:.0f} s".format(self.timeout)
        if status < 500:
            return None
        kind = _error_type(body)
        if kind in BROKEN:
            return "POST /invocations answered {} {}".format(status, kind)
        return None


def _error_type(body):
    try:
        value = json.loads(body.decode("utf-8"))
    except ValueError:
        return None
    return value.get("error_type") if isinstance(value, dict) else None
