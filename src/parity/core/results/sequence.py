"""What a token-level comparison found: a black-box candidate's log-probabilities against the reference's,
position by position (core/sequence.py compares them)."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from parity.core.results.findings import Diagnosis

NEAR_TIE_NATS = 0.5   # Q4/Q8 quantization moved log-probs by up to ~0.3 nats in our measurements


def _gap(best: float, compared: float) -> float:
    """log(best / compared) in nats; infinite where `compared` has no probability."""
    return math.log(best / compared) if compared > 0 else math.inf


@dataclass(frozen=True)
class PositionResult:
    index: int                                   # candidate token index
    offset: int
    piece: str                                   # the candidate's token here
    generated: bool
    reference_top: tuple[tuple[str, float], ...]  # the reference's top-k (piece, probability) for this token
    candidate_top1: str | None                   # the candidate's most likely piece in its row
    reference_prob_of_piece: float               # the reference's probability of the candidate's token
    margin_nats: float                           # the reference's top-1 minus top-2 log-probability
    kl_topk: float | None                        # KL(reference || candidate) over the candidate's top-k

    def __repr__(self) -> str:
        return f"<PositionResult {self.index} {self.piece!r} agrees={self.agrees}>"

    @property
    def agrees(self) -> bool:
        """The token (generated) or the candidate's top-1 (prompt) is the reference's top-1."""
        compared = self.piece if self.generated else self.candidate_top1
        return compared is None or compared == self.reference_top[0][0]

    @property
    def gap_nats(self) -> float:
        """How far the candidate's token here (its top-1, in the prompt) lies below the reference's top-1, in
        nats; for a token beyond the reference's top-k, the gap to the k-th (it lies at least that far)."""
        best = self.reference_top[0][1]
        if self.generated:
            return _gap(best, self.reference_prob_of_piece)
        return _gap(best, dict(self.reference_top).get(self.candidate_top1, self.reference_top[-1][1]))

    @property
    def near_tie(self) -> bool:
        """The reference's top-1 beats the candidate's token by less than NEAR_TIE_NATS: a flip that rounding can
        make. Where the candidate's prompt top-1 is beyond the reference's top-k and that bound is no help, the
        margin of the reference's top two decides."""
        if not self.generated and self.candidate_top1 not in dict(self.reference_top) and \
                self.gap_nats < NEAR_TIE_NATS:
            return self.margin_nats < NEAR_TIE_NATS
        return self.gap_nats < NEAR_TIE_NATS


@dataclass(frozen=True)
class SequenceComparison:
    positions: tuple[PositionResult, ...]
    unaligned: int                                # candidate tokens with no reference token at their offset
    first_divergence: PositionResult | None       # first disagreement that is not a near tie
    diagnoses: tuple[Diagnosis, ...] = ()
    notes: tuple[str, ...] = ()
    candidate_text: str = ""

    def __bool__(self) -> bool:
        return self.first_divergence is None

    def __repr__(self) -> str:
        where = f", first divergence at token {self.first_divergence.index}" if self.first_divergence else ""
        return f"<SequenceComparison {self.agreeing}/{len(self.positions)} positions agree{where}>"

    @property
    def agreeing(self) -> int:
        return sum(position.agrees for position in self.positions)

    @property
    def headline(self) -> str:
        """The one summary every report format prints: the prompt and the continuation counted apart."""
        prompt = [p for p in self.positions if not p.generated]
        generated = [p for p in self.positions if p.generated]
        kl = f"; mean KL over the top-k {self.mean_kl:.4f}" if self.mean_kl is not None else ""
        said = (f"prompt: top-1 agrees at {sum(p.agrees for p in prompt)}/{len(prompt)} positions" if prompt
                else "prompt: not compared (not echoed)")
        return (f"{said}; greedy continuation: {sum(p.agrees for p in generated)}/{len(generated)} tokens are the "
                f"reference's top-1{kl}")

    @property
    def mean_kl(self) -> float | None:
        values = [p.kl_topk for p in self.positions if p.kl_topk is not None]
        return float(np.mean(values)) if values else None
