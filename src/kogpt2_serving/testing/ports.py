"""Ports for servers that tests and benchmarks start."""
import random
import socket

from ..serving.server import MAX_PORT


def free_port(host="127.0.0.1", low=20000, high=MAX_PORT, tries=100):
    """A port MMS accepts (< 32767, so outside the OS's ephemeral range) that nothing is bound
    to right now: for tests and benchmarks that start servers."""
    for _ in range(tries):
        port = random.randint(low, high)
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            try:
                s.bind((host, port))
            except OSError:
                continue
            return port
    raise RuntimeError("no free port in {}-{}".format(low, high))
