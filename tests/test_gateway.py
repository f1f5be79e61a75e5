"""The gateway (kogpt2_serving.serving.gateway) against a fake Multi Model Server, in this Python and
in the oldest one the machine has (the MXNet 1.6 images run 3.6): forwarding, kept-alive
backend connections, error reshaping, timeout, body limit, backend gone. The real server with
the real MMS behind the gateway is tested in test_server*.py."""
import glob
import os
import shutil
import subprocess

import pytest

from gateway_check import check_all
from kogpt2_serving.serving import gateway

SRC = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "src")


def test_gateway_scenarios_in_this_python():
    check_all(gateway)


def _oldest_python():
    candidates = [shutil.which("python3.6")] + sorted(glob.glob(os.path.expanduser("~/.pyenv/versions/3.6*/bin/python")))
    return next((c for c in candidates if c and os.access(c, os.X_OK)), None)


@pytest.mark.skipif(_oldest_python() is None, reason="no Python 3.6 interpreter on this machine "
                                                     "(python3.6 or ~/.pyenv/versions/3.6*)")
def test_gateway_scenarios_on_python_3_6():
    here = os.path.dirname(os.path.abspath(__file__))
    done = subprocess.run([_oldest_python(), os.path.join(here, "gateway_check.py"), SRC], stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, timeout=120, env=dict(os.environ, PYENV_VERSION="3.6.15"))
    output = done.stdout.decode("utf-8", "replace")
    assert done.returncode == 0 and "gateway checks passed on Python 3.6" in output, output
