"""Tokenizers (SentencePiece for v1, tokenizers for v2) and incremental detokenization."""
