"""The engine's socket from asyncio: what the native frontend uses instead of a light worker.

One :class:`EngineExchange` is one connection and one request (:mod:`.engine_protocol`).
Closing it before the answer is how a request is cancelled: the engine's connection thread
sees the end close and stops spending steps on it, so a client that disconnects (aiohttp
cancels its handler) costs at most the step in progress.
"""
import asyncio

from . import engine_protocol as protocol


class EngineExchange:
    def __init__(self, socket_path):
        self.socket_path = socket_path
        self._reader = self._writer = None

    async def __aenter__(self):
        try:
            self._reader, self._writer = await asyncio.open_unix_connection(self.socket_path)
        except OSError:
            raise protocol.EngineUnavailable("the engine is not running (it may be restarting); retry the request")
        return self

    async def __aexit__(self, *exc):
        self.close()

    def close(self):
        if self._writer is not None:
            self._writer.close()
            self._writer = None

    async def send(self, message):
        self._writer.write(protocol.encode(message))
        await self._writer.drain()

    async def receive(self, timeout):
        """The next message; EngineUnavailable when the engine ends the connection or is silent
        for `timeout` s."""
        try:
            head = await asyncio.wait_for(self._reader.readexactly(protocol.HEADER.size), timeout)
            (size,) = protocol.HEADER.unpack(head)
            protocol.check_size(size)
            return protocol.decode(await asyncio.wait_for(self._reader.readexactly(size), timeout))
        except asyncio.TimeoutError:
            raise protocol.EngineUnavailable("the engine did not answer within {:.0f} s".format(timeout))
        except (asyncio.IncompleteReadError, ConnectionError, protocol.ProtocolError):
            raise protocol.EngineUnavailable("the engine process ended while handling this request (it is being "
                                             "restarted); retry the request")


def checked(answer):
    """An answer message, or its error raised as a ServingError."""
    if not answer.get("ok"):
        raise protocol.error_from_json(answer)
    return answer
