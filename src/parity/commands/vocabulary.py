"""A candidate's logits seen through the reference's vocabulary, for what runs on its logits (the greedy run,
decoding, `parity generate`).

A port may pad its vocabulary past the tokenizer's (nanoGPT to 50,304 for GPT-2's 50,257, Megatron to a
multiple of 128 per rank): its extra columns are no token, so they are dropped wherever its logits are read,
as the forward pass's comparison drops them (core/conventions.py, `vocab_padding`); else an argmax could pick a
column that is no token. A candidate with fewer columns than the reference's vocabulary cannot be read so: what
needs its logits is not checked, with that reason (was: a traceback, "operands could not be broadcast").
"""

from __future__ import annotations

import numpy as np

from parity.core.generation import greedy


class ReferenceVocabulary:
    """The candidate, its logits cut to the reference's `width` columns; everything else asked of it as it is."""

    def __init__(self, candidate, width: int) -> None:
        self._candidate = candidate
        self.width = width

    def __repr__(self) -> str:
        return f"<ReferenceVocabulary {self.width} columns of {self._candidate!r}>"

    def __getattr__(self, name: str):
        return getattr(self._candidate, name)

    def logits(self, ids: list[int], first: int = 0) -> np.ndarray:
        return self._candidate.logits(ids, first)[..., : self.width]

    def greedy(self, prompt: list[int], count: int) -> tuple[list[int], list[np.ndarray]]:
        return greedy(self.logits, prompt, count)     # a full pass per token: the cut columns never chosen

    def incremental(self, prompt: list[int], continuation: list[int], **options):
        rows, steps = self._candidate.incremental(prompt, continuation, **options)
        return rows[..., : self.width], steps

    def chunked_prefill_logits(self, prompt: list[int]) -> np.ndarray:
        return self._candidate.chunked_prefill_logits(prompt)[..., : self.width]

    def padded_batch_logits(self, prompt: list[int], other: list[int], pad: int, side: str) -> np.ndarray:
        return self._candidate.padded_batch_logits(prompt, other, pad, side)[..., : self.width]


def seen_through(candidate, candidate_width: int, reference_width: int):
    """(the candidate as its logits are read, why they cannot be): itself where the widths agree, its first
    `reference_width` columns where it has more, and a reason where it has fewer."""
    if candidate_width == reference_width:
        return candidate, None
    if candidate_width > reference_width:
        return ReferenceVocabulary(candidate, reference_width), None
    return candidate, (f"its logits have {candidate_width} columns where the reference's vocabulary has "
                       f"{reference_width}: return a column for every token")
