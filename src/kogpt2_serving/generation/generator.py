"""Text in, sequences out: the one entry point the CLI, the handler and benchmarks use.

A request is a prompt with its :class:`~kogpt2_serving.params.GenerationParameters`. Requests
decoded by greedy or sampling rows share one batch even when their parameters differ: every
row has its own chooser, processors, seed and length budget (see
:mod:`kogpt2_serving.generation.strategies`). Beam-search requests run one at a time, because their
rows are reordered by beam.
"""
import random
from typing import List, NamedTuple, Optional

from ..errors import InvalidParameter, PromptTooLong
from ..text.tokenizer import IncrementalDecoder
from .params import MAX_SEED
from .processors import build_processors, build_warpers
from .stopping import STOP_SEQUENCE, StoppingCriteria
from .strategies import Greedy, Row, Sampler, beam_search, decode_rows


class TokenInfo(NamedTuple):
    id: int
    text: str
    logprob: Optional[float]


class Sequence(NamedTuple):
    text: str  # the continuation only; a matched stop string is cut off
    token_ids: List[int]  # generated ids, </s> included when it ended the sequence
    finish_reason: str  # "length" | "eos_token" | "stop_sequence"
    generated_tokens: int
    seed: Optional[int]  # the sampling seed used (None for greedy and beam search)
    tokens: Optional[List[TokenInfo]]  # per-token details when asked for
    prompt_tokens: int


class Prepared(NamedTuple):
    """A prompt encoded once, its length checked against the model: ready to decode."""

    ids: List[int]
    params: object  # GenerationParameters


def prepare(tokenizer, positions, prompt, params):
    """Prompt ids, encoded once and checked against the model's positions (413 naming both
    lengths): the engine's in-process callers and the light workers alike."""
    ids = tokenizer.encode_prompt(prompt)
    PromptTooLong.check(len(ids), params.max_new_tokens, positions)
    return Prepared(ids, params)


class Generator:
    """Generates for a loaded model. One call at a time (the engine is not thread-safe).

    ``generate`` / ``generate_many`` are the scripting API and check their prompts; the serving
    path, whose prompts the codec has checked, calls ``prepare`` and ``decode``.
    """

    def __init__(self, loaded):
        self.engine = loaded.engine
        self.tokenizer = loaded.tokenizer

    def generate(self, prompts, params):
        """Same parameters for every prompt -> one list of sequences per prompt."""
        return self.generate_many([(prompt, params) for prompt in prompts])

    def generate_many(self, requests):
        """[(prompt, params)] -> one list of `num_return_sequences` sequences per request."""
        for prompt, _ in requests:
            if not isinstance(prompt, str) or not prompt.strip():
                raise InvalidParameter("inputs", "inputs must be a non-empty string, got {!r}".format(prompt)[:120])
        return self.decode([self.prepare(prompt, params) for prompt, params in requests])

    def prepare(self, prompt, params):
        """A prompt for this model (module-level `prepare`)."""
        return prepare(self.tokenizer, self.engine.max_positions, prompt, params)

    def decode(self, prepared):
        """[Prepared] -> one list of sequences per item, in order. Greedy and sampling rows share
        one batch; beam-search requests run one at a time."""
        results = [None] * len(prepared)
        rows = []
        for index, item in enumerate(prepared):
            if item.params.uses_beams:
                results[index] = self.beam_search(item)
            else:
                rows.append((index, item.ids, item.params))
        if rows:
            for index, sequences in self._decode_rows(rows):
                results[index] = sequences
        return results

    def _decode_rows(self, requests):
        rows, owners = [], []
        for index, ids, params in requests:
            seed, own = self.rows_of(Prepared(ids, params))
            rows += own
            owners += [(index, seed, params)] * len(own)
        decode_rows(self.engine, rows, [p.max_new_tokens for _, _, p in owners], filler_id=self.tokenizer.eos_id)
        grouped = {}
        for row, (index, seed, params) in zip(rows, owners):
            grouped.setdefault(index, []).append(self.sequence(row, seed, params))
        return sorted(grouped.items())

    def rows_of(self, item):
        """(seed, rows) of a prepared prompt decoded by greedy or sampling rows: one chooser per
        prompt, so its rows share the prompt's RNG, drawn in row order."""
        seed, chooser = self._chooser(item.params)
        return seed, [self._row(item.ids, item.params, chooser) for _ in range(item.params.num_return_sequences)]

    def _chooser(self, params):
        processors = build_processors(params, self.tokenizer.eos_id)
        if not params.do_sample:
            return None, Greedy(processors, params.details)
        import numpy as np

        seed = params.seed if params.seed is not None else random.SystemRandom().randint(0, MAX_SEED)
        return seed, Sampler(processors, build_warpers(params), np.random.RandomState(seed))

    def _row(self, ids, params, chooser):
        stopping = StoppingCriteria(self.tokenizer.eos_id, params.max_new_tokens, params.stop, params.stop_style)
        return Row(ids, chooser, stopping, IncrementalDecoder(self.tokenizer, ids), params.no_repeat_ngram_size)

    def beam_search(self, item, out_of_time=None):
        """A prepared beam-search prompt -> its sequences, best first. out_of_time() (optional)
        is asked at every step; when it says so, live beams end as `time_limit`."""
        ids, params = item.ids, item.params
        processors = build_processors(params, self.tokenizer.eos_id)
        stop = StopStrings(self.tokenizer, ids, params.stop) if params.stop else None
        sequences = []
        for hypothesis in beam_search(self.engine, ids, params, self.tokenizer.eos_id, processors, stop,
                                      out_of_time):
            # Rebuilds text and details; a stop string already ended the hypothesis in the search.
            row = self._row(ids, params, chooser=None)
            for token, logprob in zip(hypothesis.tokens, hypothesis.logprobs):
                row.accept(token, logprob)
                if row.finished:
                    break
            if not row.finished:  # ended for time: no stopping criterion fired
                row.end(hypothesis.finish_reason)
            sequences.append(self.sequence(row, None, params))
        return sequences

    @staticmethod
    def sequence(row, seed, params):
        """A finished row as the Sequence the codec renders (token details when asked for)."""
        ids = [token for token, _, _ in row.tokens]
        details = [TokenInfo(token, text, logprob) for token, text, logprob in row.tokens] if params.details else None
        return Sequence(row.text, ids, row.finish_reason, len(ids), seed, details, len(row.prompt_ids))

class StopStrings:
    """Beam search's stop check: a hypothesis' detokenized text against the stop strings,
    decoded and matched exactly as a Row does, so the search ranks what will be returned."""

    def __init__(self, tokenizer, prompt_ids, stop):
        self.tokenizer, self.prompt_ids = tokenizer, list(prompt_ids)
        self.criteria = StoppingCriteria(eos_id=-1, max_new_tokens=float("inf"), stop=stop)

    def start(self):
        return IncrementalDecoder(self.tokenizer, self.prompt_ids), ""

    def advance(self, state, token):
        decoder, text = state[0].copy(), state[1]
        piece = decoder.push(token)
        text += piece
        return (decoder, text), self.criteria(token, 0, text, len(piece)).reason == STOP_SEQUENCE

