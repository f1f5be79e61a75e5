"""The light worker's side of the engine: what ``model_fn`` returns when ``serve`` runs an engine.

A light worker never imports MXNet. It holds the tokenizer (to encode and check prompts, so a
413 or a 400 costs no engine time) and the engines' socket paths (an :class:`~.engine_pool.EnginePool`,
which picks an engine per request); ``predict_fn`` sends the encoded prompts and their
parameters to an engine process and waits for the answer, which ``output_fn`` renders as
before. The weights exist once per engine, whatever the number of workers.
"""
import logging
import time
from typing import NamedTuple, Optional

from ..errors import ServingError
from ..files.default_model import or_demo_model
from ..files.loader import load_tokenizer
from ..files.model_dir import find_model_files
from ..generation.generator import prepare
from ..generation.scheduler import check_fits
from ..settings import engine_limits
from . import engine_protocol as protocol
from .codec import Answer, Prediction
from .engine_pool import EnginePool, connect, exchange

log = logging.getLogger(__name__)

CONNECT_WAIT = 30.0  # s model_fn waits for the engine (serve starts MMS only once it answers)
ANSWER_MARGIN = 10.0  # s past a request's deadline before the worker stops waiting for the engine


class RequestMeta(NamedTuple):
    """What the gateway tells a worker about a request (headers it sets itself)."""

    request_id: Optional[str] = None
    received: Optional[float] = None  # time.time() at the gateway


class EngineModel:
    """The tokenizer, the engine's limits, and the engines' addresses (`sockets`: a path, several
    joined by os.pathsep, or an EnginePool)."""

    def __init__(self, model_dir, sockets):
        self.engines = sockets if isinstance(sockets, EnginePool) else EnginePool(sockets)
        self.files = find_model_files(or_demo_model(model_dir, log))
        self.tokenizer = load_tokenizer(self.files)
        self.limits = engine_limits()
        self.info = self._wait_for_engine()
        self.positions = int(self.info["positions"])
        log.info("light worker: generation runs in %d engine process(es) (first to answer: pid %s, %s) at %s",
                 len(self.engines.paths), self.info.get("pid"), self.info.get("device"), ", ".join(self.engines.paths))

    def _wait_for_engine(self):
        deadline = time.time() + CONNECT_WAIT
        while True:
            try:
                return self.call({"op": "info"}, timeout=10)
            except protocol.EngineUnavailable:
                if time.time() > deadline:
                    raise
                time.sleep(0.2)

    def predict_batch(self, payloads, metas=None):
        """Payloads -> one Prediction or ServingError each, as serving.batching.predict_batch."""
        metas = metas or [RequestMeta()] * len(payloads)
        outcomes = []
        for payload, meta in zip(payloads, metas):
            try:
                outcomes.append(self.predict(payload, meta))
            except ServingError as e:
                outcomes.append(e)
        return outcomes

    def predict(self, payload, meta=RequestMeta()):
        items = prepare_items(self.tokenizer, self.positions, [(p.text, p.params) for p in payload.prompts],
                              self.limits)
        deadline = deadline_of(meta, self.limits)
        answer = self.call(generate_message(meta.request_id, items, deadline),
                           timeout=max(1.0, deadline - time.time()) + ANSWER_MARGIN)
        return prediction_of(payload, answer)

    def call(self, message, timeout):
        return self.engines.call(message, timeout)


def prepare_items(tokenizer, positions, prompts, limits):
    """[(text, params)] -> [Prepared], each encoded once and checked against the model's positions
    and the engine's limits (so a 413 or 400 costs no engine time)."""
    items = [prepare(tokenizer, positions, text, params) for text, params in prompts]
    check_fits(items, limits)
    return items


def deadline_of(meta, limits):
    """The time.time() at which the engine stops decoding a request: its arrival (the gateway's
    clock when it says) plus the request timeout."""
    received = meta.received if meta.received is not None else time.time()
    return received + limits.request_timeout


def generate_message(request_id, items, deadline, stream=False):
    message = {"op": "generate", "id": request_id, "deadline": deadline,
               "items": [{"ids": item.ids, "params": protocol.params_to_json(item.params)} for item in items]}
    if stream:
        message["stream"] = True
    return message


def results_of(answer):
    """An engine answer's results: per item, its list of Sequences."""
    return [[protocol.sequence_from_json(s) for s in sequences] for sequences in answer["results"]]


def prediction_of(payload, answer):
    """The engine's answer to a payload's prompts, regrouped by request, as output_fn takes it."""
    results = iter(results_of(answer))
    answers = tuple(Answer(request, [next(results) for _ in request.prompts], answer["seconds"])
                    for request in payload.requests)
    return Prediction(answers, payload.lines)


def engine_call(socket_path, message, timeout):
    """One exchange with the engine at `socket_path` (this engine, not a pool's choice) -> its
    answer; its error as a ServingError (EngineUnavailable when it is not there or ends mid-exchange)."""
    return exchange(connect(socket_path, timeout), message, timeout)
