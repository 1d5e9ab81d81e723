"""What a generation comparison found: greedy decoding on both sides, teacher-forced agreement, and the
sampler (core/generation.py runs them)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from parity.core.results.sequence import NEAR_TIE_NATS


@dataclass(frozen=True)
class GreedyDivergence:
    step: int                                    # index into the continuation
    reference_token: int
    candidate_token: int
    reference_top: tuple[tuple[int, float], ...]  # the reference's top-k (id, probability) at that step
    margin_nats: float                           # the reference's top-1 minus top-2 log-probability
    candidate_rank: int | None                   # where the candidate's token stands in the reference's order
    near_tie_nats: float = NEAR_TIE_NATS         # a gap under this, here, is one the candidate's precision can flip
    near_tie_basis: str = ""                     # where that came from ("" : the fixed NEAR_TIE_NATS)

    def __repr__(self) -> str:
        return f"<GreedyDivergence step {self.step}: {self.reference_token} vs {self.candidate_token}>"

    @property
    def candidate_gap_nats(self) -> float | None:
        """The reference's log-probability of its top token minus that of the candidate's, where the candidate's
        is among the reference's top-k (its top two: the margin)."""
        if self.candidate_rank == 1:
            return self.margin_nats
        chosen = dict(self.reference_top).get(self.candidate_token)
        if not chosen:
            return None
        return float(np.log(self.reference_top[0][1]) - np.log(chosen))

    @property
    def tie_rule(self) -> str:
        """The margin a near tie is under here, and where it came from, for reports."""
        return f"{self.near_tie_nats:.3g} nats ({self.near_tie_basis or 'the fixed near-tie margin'})"

    @property
    def near_tie(self) -> bool:
        """The candidate took a token the reference ranks within `near_tie_nats` of its top one."""
        gap = self.candidate_gap_nats
        return gap is not None and gap < self.near_tie_nats


@dataclass(frozen=True)
class TeacherForced:
    kl: tuple[float, ...]          # per generated position, KL(reference || candidate) in nats
    top1: tuple[bool, ...]         # candidate's top-1 == reference's top-1
    top5: tuple[bool, ...]         # candidate's top-1 within the reference's top 5
    margins: tuple[float, ...]     # the reference's top-1 minus top-2 log-probability
    kl_bound: float | None = None  # calibrated: KL_FACTOR x the largest KL the candidate's precision makes + a floor
    kl_basis: str = ""             # what the bound is (or why there is none)
    near_tie_nats: tuple[float, ...] = ()   # calibrated, per position: a top-1 flip under this margin is noise
                                            # (core/generation.near_tie_margins); () : NEAR_TIE_NATS everywhere

    def __repr__(self) -> str:
        return f"<TeacherForced mean KL {self.mean_kl:.4g}, top-1 {sum(self.top1)}/{len(self.top1)}>"

    @property
    def over_bound(self) -> list[int]:
        """Positions whose KL is over the calibrated bound (a NaN KL is over it)."""
        if self.kl_bound is None:
            return []
        return [i for i, kl in enumerate(self.kl) if not kl <= self.kl_bound]

    @property
    def mean_kl(self) -> float:
        return float(np.mean(self.kl)) if self.kl else 0.0

    @property
    def real_disagreements(self) -> list[int]:
        """Positions whose top-1 differs where the reference is not near a tie."""
        return [i for i, (same, margin) in enumerate(zip(self.top1, self.margins))
                if not same and margin >= self.near_tie_at(i)]

    def near_tie_at(self, position: int) -> float:
        """The margin under which a top-1 flip at `position` is one the candidate's precision can make."""
        return self.near_tie_nats[position] if position < len(self.near_tie_nats) else NEAR_TIE_NATS


@dataclass(frozen=True)
class SamplerCheck:
    kl: tuple[float, ...]
    total_variation: tuple[float, ...]
    first_step: int | None               # first step where the two samplers' distributions differ
    fitted_temperature: float | None     # the temperature that explains the candidate's distribution there

    def __repr__(self) -> str:
        return f"<SamplerCheck first difference at {self.first_step}>"

    def __bool__(self) -> bool:
        return self.first_step is None


@dataclass(frozen=True)
class GenerationComparison:
    prompt: tuple[int, ...]
    reference_tokens: tuple[int, ...]            # the reference's greedy continuation
    candidate_tokens: tuple[int, ...]
    divergence: GreedyDivergence | None
    teacher_forced: TeacherForced
    sampler: SamplerCheck | None = None
    pieces: tuple[str, ...] = ()                 # token id -> text, for reports

    def __repr__(self) -> str:
        where = f", diverges at step {self.divergence.step}" if self.divergence else ""
        return f"<GenerationComparison {len(self.reference_tokens)} tokens{where}>"

    def __bool__(self) -> bool:
        greedy_ok = self.divergence is None or self.divergence.near_tie
        forced = self.teacher_forced
        return (greedy_ok and not forced.real_disagreements and not forced.over_bound
                and (self.sampler is None or bool(self.sampler)))
