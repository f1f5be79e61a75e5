"""The client side of several engines: which engine a request goes to, and what to do when one is down.

``serve`` can run one engine per device (:mod:`.engine_plan`); a light worker or the native
frontend then holds an :class:`EnginePool` of their sockets (``KOGPT2_ENGINE_SOCKET`` lists
them, joined by ``os.pathsep``; a single path is a pool of one). Each request goes to the
engine with the fewest of *this process's own* requests in flight (nobody has to share
counts: a light worker holds one request at a time, so its pool turns round-robin, and the
native frontend, which holds them all, balances them), ties broken round-robin from a random
start so that 32 light workers do not all begin with engine 0. An engine whose socket refuses
the connection (dead, or reloading after a crash) is skipped for the next; only when every
engine refuses is the answer 503 ``engine_unavailable``. A request in flight on an engine
that dies is not retried elsewhere: it may have streamed tokens already, and the client is
told to retry.
"""
import os
import random
import socket
import threading

from . import engine_protocol as protocol
from .engine_async import EngineExchange

NOT_RUNNING = "the engine is not running (it may be restarting); retry the request"
ENDED = "the engine process ended while handling this request (it is being restarted); retry the request"


def socket_paths(value):
    """KOGPT2_ENGINE_SOCKET's value -> the socket paths it lists (os.pathsep between them)."""
    return [path for path in str(value).split(os.pathsep) if path]


class EnginePool:
    def __init__(self, paths, start=None):
        self.paths = tuple(socket_paths(paths) if isinstance(paths, str) else paths)
        if not self.paths:
            raise ValueError("an engine pool needs at least one socket path")
        self._in_flight = [0] * len(self.paths)
        self._next = random.randrange(len(self.paths)) if start is None else start % len(self.paths)
        self._lock = threading.Lock()

    def in_flight(self):
        with self._lock:
            return list(self._in_flight)

    def acquire(self, tried=()):
        """The index of the engine to try next, counted in flight until release(): the fewest
        requests in flight among those not tried yet, ties round-robin. None when all were tried."""
        n = len(self.paths)
        with self._lock:
            candidates = [i for i in range(n) if i not in tried]
            if not candidates:
                return None
            pick = min(candidates, key=lambda i: (self._in_flight[i], (i - self._next) % n))
            self._in_flight[pick] += 1
            self._next = (pick + 1) % n
            return pick

    def release(self, index):
        with self._lock:
            self._in_flight[index] -= 1

    def call(self, message, timeout):
        """One exchange with the chosen engine (the next one when it refuses) -> its answer."""
        tried = []
        while True:
            index = self.acquire(tried)
            if index is None:
                raise protocol.EngineUnavailable(NOT_RUNNING)
            tried.append(index)
            try:
                try:
                    sock = connect(self.paths[index], timeout)
                except protocol.EngineUnavailable:
                    continue
                return exchange(sock, message, timeout)
            finally:
                self.release(index)

    def exchange(self):
        """``async with pool.exchange() as engine:`` an EngineExchange on the chosen engine."""
        return _PooledExchange(self)


class _PooledExchange:
    def __init__(self, pool):
        self.pool = pool
        self._exchange, self._index = None, None

    async def __aenter__(self):
        tried = []
        while True:
            index = self.pool.acquire(tried)
            if index is None:
                raise protocol.EngineUnavailable(NOT_RUNNING)
            tried.append(index)
            engine = EngineExchange(self.pool.paths[index])
            try:
                await engine.__aenter__()
            except protocol.EngineUnavailable:
                self.pool.release(index)
                continue
            self._exchange, self._index = engine, index
            return engine

    async def __aexit__(self, *exc):
        self._exchange.close()
        self.pool.release(self._index)


def connect(socket_path, timeout):
    """A connected socket to the engine at `socket_path`; EngineUnavailable when nothing listens."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(timeout)
    try:
        sock.connect(socket_path)
    except OSError:
        sock.close()
        raise protocol.EngineUnavailable(NOT_RUNNING)
    return sock


def exchange(sock, message, timeout):
    """Send `message` on a connected socket and return the answer (closing the socket); the
    engine's error as a ServingError, its loss as EngineUnavailable."""
    try:
        try:
            protocol.send(sock, message)
            answer = protocol.receive(sock)
        except socket.timeout:
            raise protocol.EngineUnavailable("the engine did not answer within {:.0f} s".format(timeout))
        except (OSError, protocol.ProtocolError):
            answer = None
        if answer is None:
            raise protocol.EngineUnavailable(ENDED)
    finally:
        sock.close()
    if not answer.get("ok"):
        raise protocol.error_from_json(answer)
    return answer
