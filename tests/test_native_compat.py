"""The native frontend (kogpt2_serving.serving.native_frontend) against a fake engine, in this
Python and in Python 3.6 with aiohttp 3.8.6 (what the MXNet 1.6 images run; `make install`
builds that venv, .venv36, when the machine has a 3.6 interpreter): every route, streaming,
errors, the body limit, a client that disconnects, drain."""
import os
import subprocess

import pytest

from native_check import check_all
from kogpt2_serving.files.default_model import DEMO_MODEL_DIR
from kogpt2_serving.serving import engine_protocol, native_frontend

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PYTHON36 = os.path.join(ROOT, ".venv36", "bin", "python")


def test_native_frontend_scenarios_in_this_python():
    check_all(native_frontend, engine_protocol, DEMO_MODEL_DIR)


@pytest.mark.skipif(not os.access(PYTHON36, os.X_OK), reason="no .venv36 (make install builds it where a Python 3.6 "
                                                             "interpreter exists: python3.6 or ~/.pyenv/versions/3.6*)")
def test_native_frontend_scenarios_on_python_3_6_with_its_pinned_aiohttp():
    done = subprocess.run([PYTHON36, os.path.join(ROOT, "tests", "native_check.py"), os.path.join(ROOT, "src")],
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=120)
    output = done.stdout.decode("utf-8", "replace")
    assert done.returncode == 0 and "native frontend checks passed on Python 3.6" in output, output
    versions = subprocess.run([PYTHON36, "-c", "import aiohttp, sys; print(sys.version_info[:2], aiohttp.__version__)"],
                              stdout=subprocess.PIPE, timeout=60).stdout.decode()
    assert versions.strip() == "(3, 6) 3.8.6"
