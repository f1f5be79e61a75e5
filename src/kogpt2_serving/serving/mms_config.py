"""Multi Model Server's configuration as ``kogpt2-serving serve`` writes it: the properties
file and the command line, built from sagemaker-inference's own defaults and ``Environment``.

Both APIs listen on unix sockets in the server's private directory (see
:mod:`kogpt2_serving.serving.gateway` for why), and the model store is the model's own
directory: MMS can reach nothing else.
"""
import math
import os
import sys
from typing import NamedTuple

from ..settings import engine_limits
from .local_http import UNIX

SERVICE = "kogpt2_serving.handler_service"
MODEL_NAME = "model"  # the toolkit's DEFAULT_MMS_MODEL_NAME
EXTRA_VMARGS = "-XX:-UsePerfData"  # no hsperfdata files in /tmp
MMS_MAX_REQUEST_SIZE = 6553500  # bytes: MMS's default max_request_size
MMS_TIMEOUT_MARGIN = 15.0  # s past the request timeout before MMS gives up on a light worker


class Sockets(NamedTuple):
    """Where MMS listens: unix socket paths in the server's private directory (the engines'
    sockets are beside them: engine_group.socket_path)."""

    inference: str
    management: str

    @classmethod
    def in_dir(cls, run_dir):
        return cls(*(os.path.join(run_dir, name + ".sock") for name in cls._fields))


def mms_properties(config, sockets, environment=None):
    """The MMS properties text: the toolkit's defaults + the keys it writes, with both APIs
    on unix sockets instead of the public address (the gateway owns that)."""
    from sagemaker_inference import environment as toolkit_environment

    env = environment or toolkit_environment.Environment()
    with open(_toolkit_file("default-mms.properties")) as f:
        text = f.read()
    if config.batch_size > 1:  # registered later with batch_size; "ALL" would load whatever the store holds
        text = text.replace("load_models=ALL", "load_models=")
    values = [
        ("default_response_timeout", env.model_server_timeout),
        ("default_workers_per_model", config.workers),
        ("inference_address", UNIX + sockets.inference),
        ("management_address", UNIX + sockets.management),
        ("use_native_io", "true"),  # unix sockets need it (MMS's default, stated)
        ("vmargs", " ".join(filter(None, [env.vmargs, EXTRA_VMARGS]))),
        ("max_request_size", max_request_size(env)),
        ("default_service_handler", SERVICE),
        ("default_response_timeout_seconds", response_timeout_seconds(config, env)),
    ]
    return text + "".join("{}={}\n".format(k, v) for k, v in values if v)


def mms_command(config, properties_file):
    """The toolkit's multi-model-server command, run by this interpreter, in the foreground.
    The model store is the model directory itself (the toolkit uses "/"), the model its "."."""
    command = [sys.executable, "-m", "mms.model_server", "--start", "--foreground",
               "--model-store", os.path.abspath(config.model_dir),
               "--mms-config", properties_file, "--log-config", _toolkit_file("log4j2.xml")]
    if config.batch_size <= 1:
        command += ["--models", "{}=.".format(MODEL_NAME)]
    return command


def max_request_size(env):
    """Bytes a request body may have: SAGEMAKER_MAX_PAYLOAD_IN_MB, else MMS's default."""
    return getattr(env, "max_request_size", None) or MMS_MAX_REQUEST_SIZE


def response_timeout_seconds(config, env):
    """The seconds key MMS gets, or None (then SAGEMAKER_MODEL_SERVER_TIMEOUT, read in minutes):
    SAGEMAKER_MODEL_SERVER_TIMEOUT_SECONDS when set; with the engine, the request timeout plus a
    margin (the engine ends every request at its deadline, so MMS's timeout is only a backstop)."""
    seconds = getattr(env, "model_server_timeout_seconds", None)
    if seconds is None and config.engine:
        seconds = int(math.ceil(engine_limits().request_timeout + MMS_TIMEOUT_MARGIN))
    return seconds


def response_timeout(config, env):
    """Seconds MMS waits for a worker's answer."""
    seconds = response_timeout_seconds(config, env)
    return float(seconds if seconds is not None else env.model_server_timeout * 60)


def _toolkit_file(name):
    import sagemaker_inference

    return os.path.join(os.path.dirname(sagemaker_inference.__file__), "etc", name)
