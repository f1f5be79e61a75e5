"""Several requests' prompts decoded together: one flat list of prepared prompts, cut into
batches of at most MAX_BATCH_ROWS decode rows, answered per request.

A request whose prompt cannot be prepared (too long for the model) fails alone; the others
share decode steps. `seconds` of a request is the time of the batches its prompts were
decoded in.
"""
import time

from ..errors import ServingError
from .codec import Answer, Prediction

MAX_BATCH_ROWS = 16  # decode rows per shared batch: bounds KV-cache memory (~75 MB/row at 1024 positions)


def predict_batch(payloads, model):
    """Several payloads (e.g. an MMS batch) -> one Prediction or ServingError per payload."""
    generator = model.generator
    outcomes = [None] * len(payloads)
    jobs = []  # (payload index, request index, Prepared), every prompt once
    for p, payload in enumerate(payloads):
        try:
            prepared = [(r, generator.prepare(prompt.text, prompt.params))
                        for r, request in enumerate(payload.requests) for prompt in request.prompts]
        except ServingError as e:
            outcomes[p] = e
            continue
        jobs += [(p, r, item) for r, item in prepared]
    sequences, seconds = [], [0.0] * len(payloads)
    for chunk in _chunks(jobs):
        started = time.time()
        sequences += generator.decode([item for _, _, item in chunk])
        elapsed = time.time() - started
        for p in {p for p, _, _ in chunk}:
            seconds[p] += elapsed
    grouped = {}  # (payload, request) -> per prompt, its sequences
    for (p, r, _), seqs in zip(jobs, sequences):
        grouped.setdefault((p, r), []).append(seqs)
    for p, payload in enumerate(payloads):
        if outcomes[p] is None:
            answers = tuple(Answer(request, grouped[(p, r)], seconds[p]) for r, request in enumerate(payload.requests))
            outcomes[p] = Prediction(answers, payload.lines)
    return outcomes


def _chunks(jobs):
    chunk, rows = [], 0
    for job in jobs:
        n = job[2].params.rows
        if chunk and rows + n > MAX_BATCH_ROWS:
            yield chunk
            chunk, rows = [], 0
        chunk.append(job)
        rows += n
    if chunk:
        yield chunk
