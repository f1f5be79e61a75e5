"""One HTTP request to a server on this machine, over TCP or a unix socket.

`serve` keeps Multi Model Server's management API on a unix socket in its private
directory (see :mod:`kogpt2_serving.serving.gateway`); urllib cannot reach one, http.client can
with a socket of our own.
"""
import http.client
import socket
from typing import Optional, Tuple

UNIX = "unix:"


class _UnixConnection(http.client.HTTPConnection):
    def __init__(self, path, timeout):
        super().__init__("localhost", timeout=timeout)
        self._path = path

    def connect(self):
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        try:
            sock.connect(self._path)
        except OSError:
            sock.close()
            raise
        self.sock = sock


def request(address: str, method: str, path: str, body: Optional[bytes] = None, headers=None,
            timeout: float = 10.0) -> Tuple[Optional[int], bytes]:
    """`address`: 'http://host:port' or 'unix:/path/to.sock' -> (status, body); (None, b'')
    when nothing answers there (not listening yet, gone, or timed out)."""
    if address.startswith(UNIX):
        connection = _UnixConnection(address[len(UNIX):], timeout)
    else:
        host_port = address.split("://", 1)[-1].rstrip("/")
        connection = http.client.HTTPConnection(host_port, timeout=timeout)
    try:
        connection.request(method, path, body=body, headers=headers or {})
        response = connection.getresponse()
        return response.status, response.read()
    except (OSError, http.client.HTTPException):
        return None, b""
    finally:
        connection.close()
