"""KoGPT2 v2's tokenizer (`tokenizer.json`), read with the `tokenizers` package.

Same interface as :class:`kogpt2_serving.text.tokenizer.SentencePieceTokenizer`, so the engine,
the decoding strategies and :class:`~kogpt2_serving.text.tokenizer.IncrementalDecoder` work with
either. Differences that follow v2's own usage:

- Prompts are the tokenizer's own encoding (its post-processor, if any, adds what the model
  was trained with); nothing is prepended. v1 prompts keep their `<s>`.
- Special tokens come from the files, never from code. Each role is looked up in
  `special_tokens_map.json`, then `tokenizer_config.json` (both written by transformers'
  `save_pretrained`), then `config.json`'s `*_token_id`, then (unk only) tokenizer.json's
  model. KoGPT2 v2 marks both ends with `</s>`: a missing bos falls back to eos, and a missing
  pad to eos (transformers' GPT-2 convention). eos is required; unk and mask may be None (a
  byte-level BPE never produces an unknown token).
- `decode` drops every special token, exactly as transformers' `skip_special_tokens=True`,
  and leaves byte-level and metaspace pieces to the tokenizer's own decoder; an incomplete
  UTF-8 sequence shows as U+FFFD, which IncrementalDecoder holds back.
"""

from ..errors import HF_INSTALL_HINT, ModelLoadError
from ..json_file import read_json_file

ROLES = ("bos", "eos", "unk", "pad", "mask")


class HFTokenizer:
    """A `tokenizers` Tokenizer with KoGPT2's special-token roles resolved from the model files."""

    def __init__(self, path, config=None, tokenizer_config=None, special_tokens_map=None):
        self.path = path
        self._tok = _load_tokenizer(path)
        tokens = _role_tokens(special_tokens_map, tokenizer_config, config, path)
        ids = {role: self._resolve(role, tokens.get(role)) for role in ROLES}
        if ids["eos"] is None:
            consulted = [p for p in (special_tokens_map, tokenizer_config, config) if p]
            raise ModelLoadError("no eos token found for {}: none of {} names one (generation needs it to stop)"
                                 .format(path, ", ".join(consulted) or "its companion files (none present)"))
        self.eos_id = ids["eos"]
        self.bos_id = ids["eos"] if ids["bos"] is None else ids["bos"]
        self.pad_id = ids["eos"] if ids["pad"] is None else ids["pad"]
        self.unk_id, self.mask_id = ids["unk"], ids["mask"]
        # Dropped even if tokenizer.json does not flag them special, as v1 drops <s>, </s>, <pad>.
        self._hidden = {self.bos_id, self.eos_id, self.pad_id}

    @property
    def vocab_size(self):
        """Size of the id space (largest id + 1, added tokens included): the model's vocab_size
        must be at least this."""
        return 1 + max(self._tok.get_vocab(with_added_tokens=True).values())

    def encode(self, text):
        """Text -> ids, without any special tokens."""
        return self._tok.encode(text, add_special_tokens=False).ids

    def encode_prompt(self, text):
        """Prompt ids as v2 is used: the tokenizer's own encoding, special tokens only if its
        post-processor adds them. An empty prompt starts from bos, as transformers' generate
        does without input ids (the engine needs at least one id)."""
        ids = self._tok.encode(text, add_special_tokens=True).ids
        return ids or [self.bos_id]

    def decode(self, ids):
        """Ids -> text; special tokens and ids outside the tokenizer (a padded vocab) are dropped."""
        return self._tok.decode([int(i) for i in ids if i not in self._hidden], skip_special_tokens=True)

    def id_to_piece(self, token_id):
        """The token string, or '' for an id the tokenizer lacks (vocab padding rows)."""
        return self._tok.id_to_token(int(token_id)) or ""

    def _resolve(self, role, source):
        """(token or id, file) -> id, checked against the vocabulary; None when no file names the role."""
        if source is None:
            return None
        value, origin = source
        if isinstance(value, int):
            if self._tok.id_to_token(value) is None:
                raise ModelLoadError("{}: {}_token_id {} is not in {}".format(origin, role, value, self.path))
            return value
        token_id = self._tok.token_to_id(value)
        if token_id is None:
            raise ModelLoadError("{}: {}_token {!r} is not in {}".format(origin, role, value, self.path))
        return token_id


def _load_tokenizer(path):
    try:
        from tokenizers import Tokenizer
    except ImportError:
        raise ModelLoadError("reading {} needs the tokenizers package: {}".format(path, HF_INSTALL_HINT))
    try:
        return Tokenizer.from_file(path)
    except Exception as e:  # tokenizers raises a bare Exception for malformed files
        raise ModelLoadError("cannot read tokenizer {}: {}".format(path, str(e).strip() or type(e).__name__))


def _role_tokens(special_tokens_map, tokenizer_config, config, tokenizer_json):
    """role -> (token string or id, file it came from), first source wins."""
    found = {}
    for path in (special_tokens_map, tokenizer_config):
        raw = _read_json(path) if path else {}
        for role in ROLES:
            token = _token_content(raw.get(role + "_token"), role, path)
            if token is not None and role not in found:
                found[role] = (token, path)
    raw = _read_json(config) if config else {}
    for role in ROLES:
        token_id = _token_id(raw.get(role + "_token_id"), role, config)
        if token_id is not None and role not in found:
            found[role] = (token_id, config)
    unk = _read_json(tokenizer_json).get("model", {}).get("unk_token")
    if unk is not None and "unk" not in found:
        found["unk"] = (unk, tokenizer_json)
    return found


def _token_content(value, role, path):
    """A role's token as stored by transformers: a string, or an AddedToken dict with 'content'."""
    if isinstance(value, dict):
        value = value.get("content")
    if value is None or isinstance(value, str):
        return value
    raise ModelLoadError("{}: {}_token must be a string, got {!r}".format(path, role, value))


def _token_id(value, role, path):
    """config.json's {role}_token_id: an int, or a list of ints (several stop ids: the first is used)."""
    if isinstance(value, list) and value:
        value = value[0]
    if value is None or (isinstance(value, int) and not isinstance(value, bool) and value >= 0):
        return value
    raise ModelLoadError("{}: {}_token_id must be a non-negative integer, got {!r}".format(path, role, value))


def _read_json(path):
    raw = read_json_file(path, "")
    if not isinstance(raw, dict):
        raise ModelLoadError("{}: expected a JSON object, got {}".format(path, type(raw).__name__))
    return raw
