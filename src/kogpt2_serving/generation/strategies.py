"""Decoding strategies, all driving the same KV-cache engine.

- :func:`decode_rows`: a batch of independent rows, each with its own token chooser
  (:class:`Greedy` or :class:`Sampler`), processors and stopping criteria, sharing every
  engine step. Rows of different requests (different parameters, seeds, lengths) can share
  a batch; a row that finished feeds a filler token until the batch ends, and finished rows
  are dropped from the cache once they are half of it.
- :func:`beam_search`: one prompt, `num_beams` rows whose cache is reordered by beam each step.

A new strategy is a chooser class with `choose(logits, context) -> (token, logprob)` (for
per-row strategies) or a function like :func:`beam_search` that drives `Engine.start/step`.
"""
import numpy as np

from . import processors as P
from .stopping import LENGTH, STOP_SEQUENCE, TIME_LIMIT


class Greedy:
    """The most likely token after the processors."""

    def __init__(self, processors, details):
        self.processors, self.details = processors, details

    def choose(self, logits, context):
        scores = P.apply(self.processors, logits, context)
        token = int(np.argmax(scores))
        return token, _logprob(scores, token) if self.details else None


SPARSE_FRACTION = 8  # sample among the candidates alone when they are at most 1/8 of the vocabulary


class Sampler:
    """A token drawn from the warped distribution with the request's own RNG, so a seed
    reproduces the output whatever else shares the batch."""

    def __init__(self, processors, warpers, rng):
        self.processors, self.warpers, self.rng = processors, warpers, rng

    def choose(self, logits, context):
        scores = P.apply(self.warpers, P.apply(self.processors, logits, context), context)
        # After top-k / top-p the candidates are a few of ~50,000 ids: the softmax and the
        # cumulative sum run over them alone (in id order, so the draw is the one the whole
        # vocabulary gives: the others add exact zeros), a third of the choice's time at 16 rows.
        candidates = np.flatnonzero(scores != P.NEG_INF) if self.warpers else None
        if candidates is not None and candidates.size * SPARSE_FRACTION <= scores.size:
            scores = scores[candidates]
        else:
            candidates = None
        probs = P.softmax(scores)
        index = min(int(np.searchsorted(np.cumsum(probs), self.rng.random_sample(), side="right")),
                    probs.size - 1)
        while probs[index] == 0:  # rounding at the top of the cumulative sum: step back
            index -= 1
        token = int(candidates[index]) if candidates is not None else index
        return token, float(np.log(probs[index]))


class Row:
    """One output sequence being decoded."""

    def __init__(self, prompt_ids, chooser, stopping, detokenizer, ngram_size=0):
        self.prompt_ids = list(prompt_ids)
        self.chooser = chooser
        self.stopping = stopping
        self.detok = detokenizer
        self.context = P.RowContext(prompt_ids, ngram_size)
        self.tokens = []  # (id, text, logprob)
        self.text = ""
        self.finish_reason = None

    @property
    def finished(self):
        return self.finish_reason is not None

    def advance(self, logits):
        token, logprob = self.chooser.choose(logits.astype(np.float64), self.context)
        self.accept(token, logprob)
        return token

    def accept(self, token, logprob):
        self.context.append(token)
        piece = self.detok.push(token) if token != self.stopping.eos_id else ""
        self.text += piece
        self.tokens.append((token, piece, logprob))
        decision = self.stopping(token, len(self.tokens), self.text, len(piece))
        if decision.stop:
            self.finish_reason = decision.reason
            if decision.cut is not None:
                self.text = self.text[:decision.cut]
            elif decision.reason == LENGTH:
                self.text += self.detok.flush()

    def end(self, reason):
        """Finish before any criterion did (e.g. `time_limit`): the text decoded so far is kept."""
        self.finish_reason = reason
        self.text += self.detok.flush()


def decode_rows(engine, rows, max_new_tokens, filler_id):
    """Decode rows (each with max_new_tokens[i]) in one batch until all are finished."""
    state, logits = engine.start([r.prompt_ids for r in rows], max_new_tokens)
    live = list(range(len(rows)))  # state row -> rows index
    while True:
        tokens = [rows[i].advance(logits[slot]) if not rows[i].finished else filler_id
                  for slot, i in enumerate(live)]
        keep = [slot for slot, i in enumerate(live) if not rows[i].finished]
        if not keep:
            return rows
        if len(keep) <= len(live) // 2:
            state.reorder(keep)
            live = [live[slot] for slot in keep]
            tokens = [tokens[slot] for slot in keep]
        logits = engine.step(state, tokens)


class Hypothesis:
    """A beam-search candidate: generated ids, their log-probabilities, its score, and the
    state its stop check carries (e.g. its detokenized text)."""

    def __init__(self, tokens, logprobs, total, context, stop_state=None):
        self.tokens, self.logprobs, self.total, self.context = tokens, logprobs, total, context
        self.stop_state = stop_state
        self.score = None
        self.finish_reason = None

    def extend(self, token, logprob, total, stop_state=None):
        context = self.context.copy()
        context.append(token)
        return Hypothesis(self.tokens + [token], self.logprobs + [logprob], total, context, stop_state)

    def finish(self, reason, length_penalty):
        self.finish_reason = reason
        self.score = length_normalized(self.total, len(self.tokens), length_penalty)
        return self


def length_normalized(sum_logprobs, length, length_penalty):
    """Beam score: the sum of generated tokens' log-probabilities (</s> included) divided by
    the number of generated tokens (</s> included) to the power length_penalty."""
    return sum_logprobs / (length ** length_penalty)


def beam_search(engine, prompt_ids, params, eos_id, processors, stop=None, out_of_time=None):
    """Best `num_return_sequences` of `num_beams` hypotheses, best first.

    Each step expands every live beam, ranks the 2 x num_beams best continuations, keeps an
    </s> continuation as a finished hypothesis when it ranks among the first num_beams (as HF
    does), and carries on with the best num_beams others. `stop` (optional) ends a hypothesis
    the same way during the search, as `stop_sequence`: an object with `start() -> state` and
    `advance(state, token) -> (state, stopped)` (the generator's checks the detokenized text for
    stop strings), so a hypothesis is ranked as it will be returned, not cut afterwards. Stops at max_new_tokens (live beams
    become `length` hypotheses), or with early_stopping once num_beams hypotheses finished, or
    otherwise once no live beam can beat the worst kept hypothesis: log-probabilities are
    <= 0, so a live beam's best possible score is its sum at the most favourable length it can
    still reach. With enough beams this is exact search (the tests check it exhaustively).
    `out_of_time()` (optional), asked after every step, ends the search early: live beams then
    become `time_limit` hypotheses.
    """
    beams, lp = params.num_beams, params.length_penalty
    state, logits = engine.start([prompt_ids], params.max_new_tokens)
    live = [Hypothesis([], [], 0.0, P.RowContext(prompt_ids, params.no_repeat_ngram_size),
                       stop.start() if stop is not None else None)]
    finished = []
    for step in range(1, params.max_new_tokens + 1):
        scores = np.stack([P.log_softmax(P.apply(processors, logits[i].astype(np.float64), h.context))
                           for i, h in enumerate(live)])  # (live, V)
        totals = scores + np.array([h.total for h in live])[:, None]  # (live, V)
        rows, nxt = [], []
        for rank, flat in enumerate(_best_flat(totals, 2 * beams)):
            i, token = divmod(int(flat), totals.shape[1])
            if not np.isfinite(totals[i, token]):
                break
            stop_state, stopped = (None, False) if stop is None or token == eos_id else \
                stop.advance(live[i].stop_state, token)
            candidate = live[i].extend(token, float(scores[i, token]), float(totals[i, token]), stop_state)
            if token == eos_id or stopped:
                if rank < beams:
                    finished.append(candidate.finish("eos_token" if token == eos_id else STOP_SEQUENCE, lp))
            elif len(nxt) < beams:
                rows.append(i)
                nxt.append(candidate)
        finished = sorted(finished, key=lambda h: -h.score)[:beams]
        if step == params.max_new_tokens:
            finished += [h.finish(LENGTH, lp) for h in nxt]
        if step == params.max_new_tokens or not nxt or _done(finished, nxt, step, params):
            break
        if out_of_time is not None and out_of_time():
            finished += [h.finish(TIME_LIMIT, lp) for h in nxt]
            break
        state.reorder(rows)
        live = nxt
        logits = engine.step(state, [h.tokens[-1] for h in live])
    finished.sort(key=lambda h: -h.score)
    return finished[: params.num_return_sequences]


def _best_flat(scores, count):
    """Flat indices of the `count` highest scores, best first (ties: lower index first), without
    sorting all live x V of them."""
    flat = scores.ravel()
    if count < flat.size:
        top = np.argpartition(-flat, count - 1)[:count]
        # Equal scores at the cut: take the lowest indices, as a stable full sort would.
        threshold = flat[top].min()
        top = np.union1d(np.flatnonzero(flat > threshold), np.flatnonzero(flat == threshold)[:count])
    else:
        top = np.arange(flat.size)
    return top[np.lexsort((top, -flat[top]))][:count]


def _done(finished, live, step, params):
    if len(finished) < params.num_beams:
        return False
    if params.early_stopping:
        return True
    lp = params.length_penalty
    # For a negative sum the most favourable length is the longest if lp > 0, else the next one.
    length = params.max_new_tokens if lp > 0 else step + 1
    best = max(length_normalized(h.total, length, lp) for h in live)
    return best <= finished[-1].score


def _logprob(scores, token):
    return float(P.log_softmax(scores)[token])
