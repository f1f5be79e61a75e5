"""The engine process: one per device, owning MXNet, the model and the continuous batcher.

``kogpt2-serving serve`` starts it (``python -m kogpt2_serving.serving.engine_process``) before
Multi Model Server, whose light workers reach it over a unix socket (the protocol:
:mod:`.engine_protocol`). The main thread runs the scheduling loop, the only thread that
touches MXNet; one thread per connection reads a request, submits it, waits for its answer
(relaying its tokens as they come when it streams) and writes it back. A worker that hangs up
while waiting (it died, or MMS timed it out) cancels its request, as does a ``cancel`` from the
gateway whose client hung up.

It prints ``engine ready`` once the model is loaded and warmed up, and a load failure as one
line ``engine: loading the model from DIR failed: CAUSE``, which ``serve`` reads for its
start-up error. SIGTERM answers what is still in flight with 503 and exits.
"""
import argparse
import collections
import logging
import os
import select
import signal
import socket
import socketserver
import sys
import threading
import time

from ..errors import ServingError, cause_of
from ..generation.scheduler import step_sizes
from ..model.cache import capacity_for
from ..settings import engine_limits
from . import engine_protocol as protocol

log = logging.getLogger("kogpt2_serving.engine")

READY_LINE = "engine ready"
LOAD_FAILED_PREFIX = "engine: loading the model from"
CANCELLED_TTL = 120.0  # s a cancel is remembered for a request the engine has not seen yet
STATS_EVERY = 60.0  # s between the loop's log lines of rows per step (when it ran any)


class EngineService:
    """The batcher plus what the connection threads share: requests by id and early cancels."""

    def __init__(self, batcher, info):
        self.batcher = batcher
        self.info = info
        self.jobs = {}  # request id -> Job, while it runs
        self.cancelled = {}  # request id -> time the cancel came, for requests not seen yet
        self.lock = threading.Lock()
        self.stopping = threading.Event()

    def run(self):
        reported, last = time.time(), self.batcher.stats.as_dict()
        while not self.stopping.is_set():
            self.batcher.iterate(wait=0.5)
            if time.time() - reported >= STATS_EVERY:
                reported, last = time.time(), self._report(last)
        self.batcher.fail_all(protocol.EngineUnavailable("the engine is shutting down; retry the request"))
        deadline = time.time() + 2.0
        while self.jobs and time.time() < deadline:  # the connection threads are writing those answers
            time.sleep(0.02)

    def _report(self, last):
        """One log line of what the loop did since `last` (a stats dict) -> the stats now."""
        now = self.batcher.stats.as_dict()
        steps = now["steps"] - last["steps"]
        if steps:
            log.info("engine: %d steps, %.2f rows per step, %d shared by several requests, %d joins, %d rebuilds, "
                     "%d requests in the last %.0f s", steps, (now["row_steps"] - last["row_steps"]) / steps,
                     now["shared_steps"] - last["shared_steps"], now["joins"] - last["joins"],
                     now["rebuilds"] - last["rebuilds"], now["requests"] - last["requests"], STATS_EVERY)
        return now

    def handle(self, conn):
        message = protocol.receive(conn)
        if message is None:
            return
        op = message.get("op")
        if op == "generate":
            self._generate(conn, message)
        elif op == "cancel":
            self.cancel(str(message.get("id")))
            protocol.send(conn, {"ok": True})
        elif op == "info":
            protocol.send(conn, dict(self.info, ok=True))
        elif op == "stats":
            protocol.send(conn, dict(self.batcher.stats.as_dict(), ok=True))
        else:
            protocol.send(conn, {"ok": False, "status": 400, "kind": "bad_request", "message": "unknown op"})

    def cancel(self, request_id):
        with self.lock:
            job = self.jobs.get(request_id)
            if job is None:
                now = time.time()
                self.cancelled = {k: t for k, t in self.cancelled.items() if now - t < CANCELLED_TTL}
                self.cancelled[request_id] = now
        if job is not None:
            log.info("request %s cancelled: its client is gone", request_id)
            self.batcher.cancel(job)

    def _generate(self, conn, message):
        from ..generation.generator import Prepared
        from ..generation.scheduler import Job

        if self.stopping.is_set():
            protocol.send(conn, protocol.error_to_json(protocol.EngineUnavailable("the engine is shutting down; retry")))
            return
        request_id = str(message.get("id") or id(message))
        items = [Prepared(list(item["ids"]), protocol.params_from_json(item["params"])) for item in message["items"]]
        with self.lock:
            if self.cancelled.pop(request_id, None) is not None:
                return  # its client left before it arrived
        wake, signal_wake = socket.socketpair()  # the loop writes a byte when there is news
        tokens = collections.deque() if message.get("stream") else None

        def on_token(item, row, token, last):
            tokens.append({"item": item, "row": row, "token": list(token), "last": last})
            _notify(signal_wake)

        job = Job(items, deadline=message.get("deadline"), on_done=lambda _: _notify(signal_wake),
                  on_token=on_token if tokens is not None else None)
        with self.lock:
            self.jobs[request_id] = job
        try:
            try:
                self.batcher.submit(job)
            except ServingError as e:
                protocol.send(conn, protocol.error_to_json(e))
                return
            if not self._relay(conn, wake, job, tokens):
                self.batcher.cancel(job)
                log.info("request %s cancelled: its %s hung up", request_id,
                         "client" if tokens is not None else "worker")
                return
            protocol.send(conn, self._answer(job))
        finally:
            with self.lock:
                self.jobs.pop(request_id, None)
            wake.close()
            signal_wake.close()

    def _relay(self, conn, wake, job, tokens):
        """Wait for the job's answer, sending its tokens as they come when it streams; False if
        the other side closed its end first."""
        while True:
            if not self._wait(conn, wake):
                return False
            wake.recv(4096)  # the news so far; what comes later wakes the next select
            done = job.finished is not None  # read after: a finish after it has its own wake-up byte
            while tokens:
                try:
                    protocol.send(conn, {"event": "token", **tokens.popleft()})
                except OSError:
                    return False
            if done:
                return True

    @staticmethod
    def _wait(conn, wake):
        """Wait for news (`wake` readable); False if the other side closed its end first.
        Blocks without a timeout: a thread that woke up every few milliseconds would preempt
        the OpenMP threads computing the steps."""
        readable, _, _ = select.select([conn, wake], [], [])
        return wake in readable  # the other side sends nothing more: its end is readable only once closed

    @staticmethod
    def _answer(job):
        if job.error is not None:
            return protocol.error_to_json(job.error)
        return {"ok": True, "seconds": job.finished - job.submitted,
                "results": [[protocol.sequence_to_json(s) for s in sequences] for sequences in job.results]}


def _notify(sock):
    """Wake the connection thread waiting for this answer (gone already if its worker left)."""
    try:
        sock.send(b".")
    except OSError:
        pass


class _Server(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    daemon_threads = True
    # socketserver's default backlog is 5: a unix socket refuses connect() outright beyond it,
    # and every light worker may connect at the same moment.
    request_queue_size = 1024

    def __init__(self, path, service):
        self.service = service
        super().__init__(path, _Connection)

    def handle_error(self, request, client_address):
        log.exception("engine: error on a worker connection")


class _Connection(socketserver.BaseRequestHandler):
    def handle(self):
        try:
            self.server.service.handle(self.request)
        except (ConnectionError, protocol.ProtocolError) as e:
            log.warning("engine: a worker connection failed: %s", e)


def load_engine(model_dir, device, dtype, max_rows):
    """Load and warm up -> (Generator, info dict). The warm-up also builds both prefill graphs (few
    tokens and more) and the step graph of every row count the scheduler steps with (step_sizes:
    1, 2, 3, ... 16, then multiples of 8): building one costs ~0.25 s at KoGPT2 size on 2 cores,
    which the first burst of concurrent requests would otherwise pay."""
    from ..files.default_model import or_demo_model
    from ..files.loader import load_model
    from ..generation.generator import Generator
    from ..generation.params import GenerationParameters
    from ..model.device import configure_threads

    configure_threads(1)  # the whole machine (or KOGPT2_THREADS): the engine is the only process computing
    from ..model.engine import FEW_PREFILL_TOKENS  # (imports MXNet: after the threads are set)

    loaded = load_model(or_demo_model(model_dir, log), device=device, dtype=dtype)
    generator = Generator(loaded)
    started = time.time()
    generator.generate(["안녕하세요"], GenerationParameters(max_new_tokens=4))
    engine, prompt = generator.engine, generator.tokenizer.encode_prompt("안녕하세요")
    longer = min(FEW_PREFILL_TOKENS + 1, engine.max_positions)
    if longer > FEW_PREFILL_TOKENS:  # the other prefill graph (Engine.prefill)
        engine.prefill([(prompt * longer)[:longer]])
    sizes = step_sizes(max_rows)
    state = engine.allocate(sizes[-1], capacity_for(len(prompt), len(sizes)))
    engine.insert(state, [0], engine.prefill([prompt]))  # the other rows are free: computed idle
    for rows in sizes:
        engine.step(state, [generator.tokenizer.eos_id] * rows)
    log.info("warm-up took %.2f s", time.time() - started)
    return generator, {"positions": loaded.config.n_positions, "device": str(loaded.ctx), "dtype": loaded.dtype}


def main(argv=None):
    parser = argparse.ArgumentParser(prog="kogpt2_serving.serving.engine_process")
    parser.add_argument("--model-dir", required=True)
    parser.add_argument("--socket", required=True)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--dtype", default="float32")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s [engine %(process)d] %(levelname)s %(message)s")
    from ..generation.scheduler import ContinuousBatcher

    try:
        limits = engine_limits()
        generator, info = load_engine(args.model_dir, args.device, args.dtype, limits.max_rows)
    except Exception as e:  # noqa: B902 -- one line with the cause, for serve's start-up error
        print("{} {} failed: {}".format(LOAD_FAILED_PREFIX, args.model_dir,
                                        e.message if isinstance(e, ServingError) else cause_of(e)), flush=True)
        if not isinstance(e, ServingError):
            log.exception("traceback of the load failure")
        return 1
    service = EngineService(ContinuousBatcher(generator, limits), dict(info, pid=os.getpid(), **limits._asdict()))
    signal.signal(signal.SIGTERM, lambda *_: service.stopping.set())
    signal.signal(signal.SIGINT, lambda *_: service.stopping.set())
    if os.path.exists(args.socket):
        os.unlink(args.socket)  # a previous engine's, after a crash
    server = _Server(args.socket, service)
    threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 1.0}, name="engine-socket",
                     daemon=True).start()
    log.info("limits: %d rows per step, %d cache tokens, %d waiting requests", limits.max_rows,
             limits.max_cache_tokens, limits.max_queue)
    print("{} on {} (pid {})".format(READY_LINE, args.socket, os.getpid()), flush=True)
    try:
        service.run()
    finally:
        server.shutdown()
        server.server_close()
    log.info("engine stopped after %d request(s), %d decode step(s)", service.batcher.stats.requests,
             service.batcher.stats.steps)
    return 0


if __name__ == "__main__":
    sys.exit(main())
