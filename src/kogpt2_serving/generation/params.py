"""Generation parameters: one object, HF/TGI names, normalized first, then verified.

Every field's default is its "disabled" value, so a processor is built only for parameters a
request actually sets. Errors name the parameter, the allowed range and the value given, and
carry HTTP 400.
"""
import math
from typing import NamedTuple, Optional, Tuple

from ..errors import InvalidParameter

MAX_SEED = 2 ** 32 - 1
MAX_STOP_SEQUENCES = 16
MAX_NEW_TOKENS = 1024  # a request's max_new_tokens at most


class GenerationParameters(NamedTuple):
    max_new_tokens: int = 64  # tokens to generate at most
    min_new_tokens: int = 0  # </s> is suppressed until this many were generated
    do_sample: bool = False  # False: greedy (or beam search when num_beams > 1)
    temperature: float = 1.0  # 1.0: logits unchanged; must be > 0 when sampling
    top_k: int = 0  # 0: disabled
    top_p: float = 1.0  # 1.0: disabled
    typical_p: float = 1.0  # 1.0: disabled
    repetition_penalty: float = 1.0  # 1.0: disabled; > 1 discourages ids already seen
    no_repeat_ngram_size: int = 0  # 0: disabled
    num_beams: int = 1  # 1: no beam search
    length_penalty: float = 1.0  # beam score = logprob sum / length ** length_penalty
    early_stopping: bool = False  # beam search stops once num_beams hypotheses finished
    num_return_sequences: int = 1
    stop: Tuple[str, ...] = ()  # stop strings; the match is cut from the output
    seed: Optional[int] = None  # sampling seed; None: drawn per request and reported back
    return_full_text: bool = True  # prompt + continuation, like the 2020 walkthrough
    details: bool = False  # per-token ids, texts and log-probabilities
    stop_style: str = "cut"  # not a request parameter: "tgi" on the TGI routes (see generation.stopping)

    @property
    def uses_beams(self):
        return self.num_beams > 1

    @property
    def rows(self):
        """Decode rows a prompt takes: num_beams with beam search, else num_return_sequences."""
        return self.num_beams if self.uses_beams else self.num_return_sequences


FIELDS = tuple(f for f in GenerationParameters._fields if f != "stop_style")  # what a request may set
_DEFAULTS = GenerationParameters()
_BOOLS = ("do_sample", "early_stopping", "return_full_text", "details")
SAMPLING_ONLY = ("temperature", "top_k", "top_p", "typical_p")


def parse_parameters(raw, max_new_tokens_limit=MAX_NEW_TOKENS):
    """A request's `parameters` object (or None) -> verified GenerationParameters."""
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise InvalidParameter("parameters", "parameters must be a JSON object, got {}".format(_type(raw)))
    unknown = sorted(set(raw) - set(FIELDS))
    if unknown:
        raise InvalidParameter(unknown[0], "unknown parameter {!r}; allowed: {}".format(
            unknown[0], ", ".join(FIELDS)))
    values = {k: v for k, v in raw.items() if v is not None or k == "seed"}
    params = _DEFAULTS._replace(**_normalize(values))
    _verify(params, max_new_tokens_limit)
    return params


def _normalize(values):
    """Types checked and coerced: ints may come as 3.0, a single stop string becomes a list.
    As in TGI, setting a sampling parameter turns sampling on unless do_sample is given;
    temperature 0 means greedy (as in TGI/vLLM)."""
    out = {}
    for name, value in values.items():
        default = getattr(_DEFAULTS, name)
        if name in _BOOLS:
            out[name] = _bool(name, value)
        elif name == "stop":
            out[name] = _stop_list(value)
        elif name == "seed":
            out[name] = None if value is None else _int(name, value)
        elif isinstance(default, int):
            out[name] = _int(name, value)
        else:
            out[name] = _float(name, value)
    if out.get("temperature") == 0.0:
        del out["temperature"]
        if out.get("do_sample"):
            raise InvalidParameter("temperature", "temperature 0 means greedy decoding; it conflicts with "
                                   "do_sample=true (use a temperature > 0)")
        out["do_sample"] = False
    changed = [n for n in SAMPLING_ONLY if n in out and out[n] != getattr(_DEFAULTS, n)]
    if changed and "do_sample" not in out:
        out["do_sample"] = True
    return out


def _verify(p, max_new_tokens_limit):
    _range("max_new_tokens", p.max_new_tokens, 1, max_new_tokens_limit)
    _range("min_new_tokens", p.min_new_tokens, 0, p.max_new_tokens, hi_name="max_new_tokens")
    _positive("temperature", p.temperature)
    _range("top_k", p.top_k, 0, None)
    _unit_interval("top_p", p.top_p)
    _unit_interval("typical_p", p.typical_p)
    _positive("repetition_penalty", p.repetition_penalty)
    _range("no_repeat_ngram_size", p.no_repeat_ngram_size, 0, None)
    _range("num_beams", p.num_beams, 1, 16)
    _range("num_return_sequences", p.num_return_sequences, 1, 16)
    if not math.isfinite(p.length_penalty):
        raise InvalidParameter("length_penalty", "length_penalty must be a finite number, got {}".format(
            p.length_penalty))
    if p.seed is not None:
        _range("seed", p.seed, 0, MAX_SEED)
    if len(p.stop) > MAX_STOP_SEQUENCES:
        raise InvalidParameter("stop", "stop allows at most {} strings, got {}".format(
            MAX_STOP_SEQUENCES, len(p.stop)))
    _verify_combinations(p)


def _verify_combinations(p):
    sampling_only = [n for n in SAMPLING_ONLY if getattr(p, n) != getattr(_DEFAULTS, n)]
    if p.uses_beams and p.do_sample:
        raise InvalidParameter("do_sample", "beam search (num_beams={}) cannot be combined with do_sample=true"
                               .format(p.num_beams))
    if sampling_only and not p.do_sample:
        raise InvalidParameter(sampling_only[0], "{} only applies when sampling; it conflicts with "
                               "do_sample=false".format(sampling_only[0]))
    if p.uses_beams and p.num_return_sequences > p.num_beams:
        raise InvalidParameter("num_return_sequences", "num_return_sequences ({}) must be <= num_beams ({})"
                               .format(p.num_return_sequences, p.num_beams))
    if not p.uses_beams and not p.do_sample and p.num_return_sequences > 1:
        raise InvalidParameter("num_return_sequences", "num_return_sequences > 1 needs do_sample=true or "
                               "num_beams >= num_return_sequences (greedy decoding gives one sequence)")
    if p.early_stopping and not p.uses_beams:
        raise InvalidParameter("early_stopping", "early_stopping only applies to beam search (num_beams > 1)")
    if p.length_penalty != 1.0 and not p.uses_beams:
        raise InvalidParameter("length_penalty", "length_penalty only applies to beam search (num_beams > 1)")


def _bool(name, value):
    if not isinstance(value, bool):
        raise InvalidParameter(name, "{} must be true or false, got {}".format(name, _show(value)))
    return value


def _int(name, value):
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidParameter(name, "{} must be an integer, got {}".format(name, _show(value)))
    return value


def _float(name, value):
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise InvalidParameter(name, "{} must be a number, got {}".format(name, _show(value)))
    return float(value)


def _stop_list(value):
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not all(isinstance(s, str) for s in value):
        raise InvalidParameter("stop", "stop must be a string or a list of strings, got {}".format(_show(value)))
    if any(s == "" for s in value):
        raise InvalidParameter("stop", "stop strings must not be empty")
    for i, text in enumerate(value):
        check_text(text, "stop[{}]".format(i), "stop")
    return tuple(value)


def check_text(text, name, parameter):
    """400 for a string that is not Unicode text: JSON's \\uD800 escapes can give a lone
    surrogate, which no tokenizer or UTF-8 encoder takes."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as e:
        raise InvalidParameter(parameter, "{} is not valid Unicode text: a lone surrogate {} at character {}".format(
            name, text[e.start].encode("unicode-escape").decode("ascii"), e.start))


def _range(name, value, lo, hi, hi_name=None):
    if value < lo or (hi is not None and value > hi):
        bound = "[{}, {}]".format(lo, hi_name or hi) if hi is not None else ">= {}".format(lo)
        where = " ({})".format(hi) if hi_name else ""
        raise InvalidParameter(name, "{} must be {}{}, got {}".format(
            name, ("in " + bound) if hi is not None else bound, where, value))


def _positive(name, value):
    if not (value > 0 and math.isfinite(value)):
        raise InvalidParameter(name, "{} must be a finite number > 0, got {}".format(name, value))


def _unit_interval(name, value):
    if not 0 < value <= 1:
        raise InvalidParameter(name, "{} must be in (0, 1], got {}".format(name, value))


def _show(value):
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _type(value):
    return {dict: "object", list: "array", str: "string", bool: "boolean", type(None): "null"}.get(
        type(value), type(value).__name__)
