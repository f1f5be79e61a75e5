"""``serve --frontend native``: the engine process behind :class:`~.native_frontend.NativeFrontend`,
with no Multi Model Server.

The same life cycle as :class:`~.server.ModelServer` (whose engines, watchdog, drain and stop it
reuses): bind the public address first (``/ping`` answers 503 until the model is ready), start
the engine and wait until its model is loaded and warmed up, load the tokenizer, then one real
generation through the public address before it says it is ready.
"""
import logging
import os
import tempfile
import time

from ..files.model_dir import find_model_files
from .engine_pool import EnginePool
from .mms_config import MMS_MAX_REQUEST_SIZE, max_request_size
from .native_frontend import FrontendModel, NativeFrontend
from .server import ModelServer, ServerError, _Output, _short_temp_root, cannot_listen

log = logging.getLogger(__name__)

MAX_PORT = 65535


class NativeServer(ModelServer):
    @property
    def pid(self):
        return None

    def start(self, should_stop=None):
        config = self.config
        if not 1 <= config.port <= MAX_PORT:
            raise ServerError("port {} is not usable: pick one in 1-{}".format(config.port, MAX_PORT))
        find_model_files(config.model_dir)
        self.run_dir = tempfile.mkdtemp(prefix="kgs-", dir=_short_temp_root())  # mode 0700: the engines' sockets
        try:
            self._gateway = NativeFrontend(config.host, config.port, max_body=max_payload(),
                                           health=self._health,
                                           model_id=os.path.basename(os.path.abspath(config.model_dir))).start()
        except OSError as e:
            raise cannot_listen(config, e)
        self._output = _Output(config.log_file)
        self._start_engines(self._engine_environment(dict(os.environ)), should_stop)
        if should_stop is not None and should_stop():
            return self
        self._gateway.attach(FrontendModel(config.model_dir, EnginePool(self._engine.socket_paths)))
        log.info("native frontend on %s: POST /invocations (streams with \"stream\": true), TGI's /generate, "
                 "/generate_stream, /info, /health; GET /ping; generation in %s",
                 self.url, self._engine.describe_pids())
        return self

    def wait_ready(self, timeout=None, should_stop=None):
        """One real generation through the public address (the engine is loaded by now)."""
        deadline = time.time() + (timeout or self._startup_timeout())
        while True:
            if should_stop and should_stop():
                return False
            if self._engine.failed:
                raise ServerError(self._engine.failed)
            if self._probe():  # /invocations answers once the model is attached; /ping only from here
                self._ready = True
                self._start_watchdog()
                return True
            if time.time() > deadline:
                raise ServerError("the model did not answer a generation within the start-up timeout")
            time.sleep(0.25)

    def poll(self):
        return None  # no MMS (so ModelServer's health check skips it): failure() says when the engine cannot go on


def max_payload():
    """SAGEMAKER_MAX_PAYLOAD_IN_MB as the toolkit reads it (MMS's default without the toolkit)."""
    try:
        from sagemaker_inference import environment
    except ImportError:
        return MMS_MAX_REQUEST_SIZE
    return max_request_size(environment.Environment())
