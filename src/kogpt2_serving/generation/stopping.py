"""When a sequence ends, and why: `length`, `eos_token`, `stop_sequence`, or `time_limit` (the
serving engine ended it at the request's deadline).

Stop strings are matched on the detokenized text, so a stop string spanning several tokens
(or part of one) is found; the text is cut where the match starts (the HF toolkit's and this
package's rule). The TGI routes follow Text Generation Inference instead
(``server/text_generation_server/utils/tokens.py``, ``StopSequenceCriteria``: the regex
``re.escape(stop) + "$"``, checked after ``max_new_tokens`` and ``</s>``): a stop string ends
the sequence only when the text so far *ends* with it, and the text keeps it.
"""
from typing import NamedTuple, Optional

LENGTH, EOS, STOP_SEQUENCE, TIME_LIMIT = "length", "eos_token", "stop_sequence", "time_limit"
CUT, TGI = "cut", "tgi"  # stop styles (see the module docstring)


class StopDecision(NamedTuple):
    stop: bool
    reason: Optional[str]
    cut: Optional[int] = None  # for stop_sequence: index in the text where the match starts


CONTINUE = StopDecision(False, None)


class StoppingCriteria:
    """Checks one sequence after each accepted token."""

    def __init__(self, eos_id, max_new_tokens, stop=(), style=CUT):
        self.eos_id = eos_id
        self.max_new_tokens = max_new_tokens
        self.stop = tuple(stop)
        self.style = style
        self._longest = max((len(s) for s in self.stop), default=0)

    def __call__(self, token_id, generated, text, new_text_len=0):
        """token_id just accepted as the `generated`-th token; `text` is the whole generated
        text so far, of which the last `new_text_len` characters are new."""
        if self.style == TGI:
            return self._tgi(token_id, generated, text, new_text_len)
        if token_id == self.eos_id:
            return StopDecision(True, EOS)
        if self.stop and new_text_len:
            cut = self._find_stop(text, new_text_len)
            if cut is not None:
                return StopDecision(True, STOP_SEQUENCE, cut)
        if generated >= self.max_new_tokens:
            return StopDecision(True, LENGTH)
        return CONTINUE

    def _tgi(self, token_id, generated, text, new_text_len):
        """TGI's order (length, then </s>, then a stop string the text ends with; nothing cut)."""
        if generated >= self.max_new_tokens:
            return StopDecision(True, LENGTH)
        if token_id == self.eos_id:
            return StopDecision(True, EOS)
        if new_text_len and any(text.endswith(s) for s in self.stop):
            return StopDecision(True, STOP_SEQUENCE)
        return CONTINUE

    def _find_stop(self, text, new_text_len):
        """Earliest match that overlaps the new text (older text was already checked)."""
        start = max(0, len(text) - new_text_len - self._longest + 1)
        window = text[start:]
        found = [window.find(s) for s in self.stop]
        found = [i for i in found if i >= 0]
        return start + min(found) if found else None
