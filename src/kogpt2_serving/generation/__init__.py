"""Decoding: parameters, logits processors, stopping, choosers, batching and beam search.

``kogpt2_serving.generation.Generator`` is the entry point scripts use; it lives in
:mod:`kogpt2_serving.generation.generator`.
"""
from .generator import Generator, Sequence, TokenInfo  # noqa: F401
