"""KoGPT2's SentencePiece tokenizer, used directly.

GluonNLP 0.9/0.10's SentencepieceTokenizer always samples (`SampleEncodeAsPieces`), which
splits Korean into characters with sentencepiece >= 0.1.90 and raises with 0.2.x, so the
deterministic `encode` is called here instead. Special ids come from the model file.

Generated ids are never re-tokenized: text is produced from ids, incrementally, by
:class:`IncrementalDecoder`.
"""
import sentencepiece as spm

from ..errors import ModelLoadError

SPECIALS = {"bos": "<s>", "eos": "</s>", "unk": "<unk>", "pad": "<pad>"}
REPLACEMENT = "\ufffd"  # what a decoder shows for an incomplete UTF-8 sequence


class SentencePieceTokenizer:
    """Encodes prompts as [<s>] + pieces and decodes ids to text, dropping special tokens."""

    def __init__(self, path):
        self.path = path
        self._sp = spm.SentencePieceProcessor()
        try:
            self._sp.Load(path)
        except (OSError, RuntimeError) as e:
            raise ModelLoadError("cannot read SentencePiece model {}: {}".format(path, e))
        ids = {name: self._special_id(piece) for name, piece in SPECIALS.items()}
        self.bos_id, self.eos_id, self.unk_id, self.pad_id = (ids[n] for n in ("bos", "eos", "unk", "pad"))
        self._hidden = {self.bos_id, self.eos_id, self.pad_id}

    @property
    def vocab_size(self):
        return self._sp.GetPieceSize()

    def encode(self, text):
        """Text -> piece ids, without <s>."""
        return list(self._sp.EncodeAsIds(text))

    def encode_prompt(self, text):
        """Prompt ids as KoGPT2 was trained on them: <s> then the pieces."""
        return [self.bos_id] + self.encode(text)

    def decode(self, ids):
        """Ids -> text; <s>, </s> and <pad> are dropped, `▁` becomes a space."""
        return self._sp.DecodeIds([int(i) for i in ids if i not in self._hidden])

    def id_to_piece(self, token_id):
        return self._sp.IdToPiece(int(token_id))

    def _special_id(self, piece):
        token_id = self._sp.PieceToId(piece)
        if piece != SPECIALS["unk"] and token_id == self._sp.unk_id():
            raise ModelLoadError("SentencePiece model {} has no {} piece; KoGPT2 needs <s>, </s>, <unk> and <pad>"
                                 .format(self.path, piece))
        return token_id


class IncrementalDecoder:
    """Turns a growing id sequence into text deltas.

    Decodes a short window of ids so each step costs O(1); a delta is emitted only when the
    window's text grows and does not end in an incomplete UTF-8 sequence (byte-fallback pieces),
    so no broken character is ever emitted. Spacing is right because the window's previous text
    is decoded with the same leading context.
    """

    def __init__(self, tokenizer, context_ids=()):
        self._tok = tokenizer
        self._ids = list(context_ids)
        self._prefix = max(0, len(self._ids) - 6)  # window start: a few ids of context
        self._read = len(self._ids)  # ids before this are already emitted

    def push(self, token_id):
        """Add one id; return the text it completes ('' while a character is incomplete)."""
        self._ids.append(token_id)
        before = self._tok.decode(self._ids[self._prefix:self._read])
        after = self._tok.decode(self._ids[self._prefix:])
        if len(after) > len(before) and not after.endswith(REPLACEMENT):
            self._prefix, self._read = self._read, len(self._ids)
            return after[len(before):]
        return ""

    def copy(self):
        """An independent decoder in the same state (beam search forks one per hypothesis)."""
        twin = IncrementalDecoder(self._tok)
        twin._ids, twin._prefix, twin._read = list(self._ids), self._prefix, self._read
        return twin

    def flush(self):
        """Text still held back at the end (an incomplete character shows as U+FFFD)."""
        before = self._tok.decode(self._ids[self._prefix:self._read])
        after = self._tok.decode(self._ids[self._prefix:])
        self._prefix = self._read = len(self._ids)
        return after[len(before):]
