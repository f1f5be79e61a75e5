"""A public HTTP listener on an asyncio loop of its own thread, with drain and stop: what the
MMS path's gateway and the native frontend share (stdlib only, Python 3.6+).

A subclass provides ``_open()`` (a coroutine that binds, raising OSError when the address is
taken) and ``_close()`` (a coroutine that ends its connections), and counts ``in_flight``.
`health()` is the server's view: None when healthy, else why not.
"""
import asyncio
import threading
import time

HEALTHY = b'{"status": "Healthy"}\n'  # GET /ping's body when ping_problem() is None


def too_large_message(length, max_body):
    return "the request body has {} bytes; this server takes at most {} (SAGEMAKER_MAX_PAYLOAD_IN_MB)".format(
        length, max_body)


class Listener:
    def __init__(self, thread_name, health=None):
        self.thread_name = thread_name
        self.health = health or (lambda: None)
        self.in_flight = 0  # requests being answered
        self.draining = False
        self._loop = None
        self._thread = None

    def start(self):
        """Bind and serve on a background thread; raises OSError if the address is taken."""
        ready, failed = threading.Event(), []
        self._thread = threading.Thread(target=self._run, args=(ready, failed), name=self.thread_name, daemon=True)
        self._thread.start()
        ready.wait()
        if failed:
            self._thread.join()
            self._thread = None
            raise failed[0]
        return self

    def _run(self, ready, failed):
        loop = asyncio.new_event_loop()
        asyncio.set_event_loop(loop)
        try:
            loop.run_until_complete(self._open())
            self._loop = loop
        except OSError as e:
            failed.append(e)
            loop.close()
            return
        finally:
            ready.set()
        loop.run_forever()
        loop.run_until_complete(self._close())
        loop.close()

    def ping_problem(self):
        """Why GET /ping answers 503, or None."""
        return "the server is shutting down" if self.draining else self.health()

    def drain(self, grace):
        """Answer new requests 503 from now on and wait up to `grace` s for those in flight;
        True if none is left."""
        self.draining = True
        deadline = time.time() + grace
        while self.in_flight and time.time() < deadline:
            time.sleep(0.05)
        return not self.in_flight

    def stop(self, timeout=15.0):
        """Stop listening, end every connection and the thread; idempotent."""
        if self._thread is None:
            return
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout)
        self._loop = self._thread = None

    async def _open(self):
        raise NotImplementedError

    async def _close(self):
        raise NotImplementedError
