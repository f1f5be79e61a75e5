"""When a sequence ends, and why: `length`, `eos_token`, `stop_sequence`, or `time_limit` (the
serving engine ended it at the request's deadline).

Stop strings are matched on the detokenized text, so a stop string spanning several tokens
(or part of one) is found; the text is cut where the match starts.
"""
from typing import NamedTuple, Optional

LENGTH, EOS, STOP_SEQUENCE, TIME_LIMIT = "length", "eos_token", "stop_sequence", "time_limit"


class StopDecision(NamedTuple):
    stop: bool
    reason: Optional[str]
    cut: Optional[int] = None  # for stop_sequence: index in the text where the match starts


CONTINUE = StopDecision(False, None)


class StoppingCriteria:
    """Checks one sequence after each accepted token."""

    def __init__(self, eos_id, max_new_tokens, stop=()):
        self.eos_id = eos_id
        self.max_new_tokens = max_new_tokens
        self.stop = tuple(stop)
        self._longest = max((len(s) for s in self.stop), default=0)

    def __call__(self, token_id, generated, text, new_text_len=0):
        """token_id just accepted as the `generated`-th token; `text` is the whole generated
        text so far, of which the last `new_text_len` characters are new."""
        if token_id == self.eos_id:
            return StopDecision(True, EOS)
        if self.stop and new_text_len:
            cut = self._find_stop(text, new_text_len)
            if cut is not None:
                return StopDecision(True, STOP_SEQUENCE, cut)
        if generated >= self.max_new_tokens:
            return StopDecision(True, LENGTH)
        return CONTINUE

    def _find_stop(self, text, new_text_len):
        """Earliest match that overlaps the new text (older text was already checked)."""
        start = max(0, len(text) - new_text_len - self._longest + 1)
        window = text[start:]
        found = [window.find(s) for s in self.stop]
        found = [i for i in found if i >= 0]
        return start + min(found) if found else None
