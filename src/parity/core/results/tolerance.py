"""A checkpoint's error, the bound it is held to, and the one message that explains one by the other.

A tolerance bounds either every element (|candidate - reference| <= atol + rtol * |reference|,
torch.testing's rule) or, calibrated to the noise of the candidate's precision (core/calibrate.py),
the error's norms: the whole tensor's rel_l2 and its worst token position's. `explain` words both
the one way every report and the comparison itself use, in the style of torch.testing:

    Mismatched elements: 24 / 96 (25.0%)
    Greatest absolute difference: 0.31 at index (3, 7) (up to 0.0001 + 0.0001·|ref| allowed)

    rel_l2 0.0361 > bound 0.00339, 32x the noise floor 0.00113
    allowed: rel_l2 0.00339, worst position 0.0062 (noise floor 0.00113); got 0.0361, 0.0529: over the bound
    Greatest absolute difference: 0.205 at index (3, 7); 96/96 elements mismatched
"""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True)
class Metrics:
    """Error of a candidate tensor against its reference, computed in float64."""

    numel: int
    max_abs: float
    mean_abs: float
    rel_l2: float               # ||candidate - reference|| / ||reference||
    cosine: float               # of the flattened tensors, over finite elements
    max_rel: float              # max |c - r| / |r| over elements where r != 0
    mismatched: int             # elements outside the tolerance (non-finite mismatches included)
    nan_reference: int
    nan_candidate: int
    inf_reference: int
    inf_candidate: int
    worst_index: tuple[int, ...] | None   # index of the largest absolute error
    worst_position: int | None            # its token position
    position_rel_l2: float = 0.0          # the largest rel_l2 of any one token position
    reference_rms: float = 0.0            # the reference tensor's scale
    # The largest rel_l2 of any one token position with each channel weighted by the reference's scale in it
    # (core/metrics.channel_weighted_position_rel_l2); measured only where a calibrated position bound needs it
    channel_position_rel_l2: float | None = None
    # rel_l2 with each token position counted once: the root mean square of the positions' rel_l2
    # (core/pair_sums.py); where a few positions dwarf the rest (a massive activation), the whole tensor's
    # rel_l2 is theirs alone; None without a token axis or with fewer than two positions
    position_weighted_rel_l2: float | None = None

    def __repr__(self) -> str:
        return (
            f"<Metrics max_abs={self.max_abs:.3g} rel_l2={self.rel_l2:.3g} "
            f"cosine={self.cosine:.6f} mismatched={self.mismatched}/{self.numel}>"
        )

    @property
    def mismatched_fraction(self) -> float:
        return self.mismatched / self.numel if self.numel else 0.0

    @property
    def new_nonfinite(self) -> bool:
        """The candidate holds more NaN or Inf than the reference."""
        return self.nan_candidate + self.inf_candidate > self.nan_reference + self.inf_reference


@dataclass(frozen=True)
class NoiseFloor:
    """What the candidate's precision alone costs at one checkpoint."""

    rel_l2: float
    position_rel_l2: float  # the worst token position's
    channel_position_rel_l2: float | None = None   # the same with each channel weighted by its scale ([T, D])
    position_weighted_rel_l2: float | None = None  # rel_l2 with each token position counted once
    # moe_experts: the experts the reference run at the candidate's precision chose, per token (ids ascending)
    chosen: tuple[tuple[int, ...], ...] | None = None

    def __repr__(self) -> str:
        return f"<NoiseFloor rel_l2={self.rel_l2:.3g} worst position {self.position_rel_l2:.3g}>"


@dataclass(frozen=True)
class Tolerance:
    """Elementwise bound |candidate - reference| <= atol + rtol * |reference|.

    `atol` is absolute, in the tensor's units; `basis` says where it came from
    (a dtype default scaled by the reference's RMS, or the user's option).
    """

    atol: float
    rtol: float
    basis: str
    # Calibrated tolerances (see core/calibrate.py) bound the error norms instead of each element:
    max_rel_l2: float | None = None           # bound on the whole tensor's rel_l2
    max_position_rel_l2: float | None = None  # bound on the worst token position's rel_l2
    noise_rel_l2: float | None = None         # the noise floor measured at this checkpoint
    # The worst position's bound with each channel weighted by its scale: a position over max_position_rel_l2
    # is within the tolerance when it is within this (a row whose norm is one heavily weighted channel)
    max_channel_position_rel_l2: float | None = None
    # The whole tensor's bound with each token position counted once: a whole tensor over max_rel_l2 is within
    # the tolerance when it is within this, and every position within its own bound (a few positions that
    # dwarf the rest hold the whole tensor's norm: one draw of their rounding)
    max_position_weighted_rel_l2: float | None = None

    def __repr__(self) -> str:
        if self.calibrated:
            return f"<Tolerance rel_l2<={self.max_rel_l2:.3g} (noise {self.noise_rel_l2:.3g}, {self.basis})>"
        return f"<Tolerance atol={self.atol:.3g} rtol={self.rtol:.3g} ({self.basis})>"

    @property
    def calibrated(self) -> bool:
        return self.max_rel_l2 is not None

    def admits(self, metrics: Metrics) -> bool:
        """Whether the candidate's error at a checkpoint is within this tolerance."""
        if not self.calibrated:
            return metrics.mismatched == 0
        return not metrics.new_nonfinite and not self._over(metrics)

    def noise_ratio(self, metrics: Metrics) -> float | None:
        """rel_l2 over the noise floor; None where no floor was measured, or it is 0 (exact at this precision)."""
        if not self.calibrated or not self.noise_rel_l2:
            return None
        return metrics.rel_l2 / self.noise_rel_l2

    def rel_l2_allowance(self, metrics: Metrics) -> float:
        """This tolerance as a bound on rel_l2: elementwise atol + rtol*|r| is about rtol + atol/rms(r) of the norm."""
        if self.calibrated:
            return self.max_rel_l2
        rms = metrics.reference_rms
        return self.rtol + (self.atol / rms if rms > 0 else 0.0)

    def position_bound(self, metrics: Metrics) -> float:
        """This tolerance as a bound on one token position's rel_l2 (the elementwise form, as a norm)."""
        return self.max_position_rel_l2 if self.calibrated else self.rel_l2_allowance(metrics)

    def explain(self, metrics: Metrics) -> str:
        """The one message: what the checkpoint got against what this tolerance allows, in lines, the
        first a headline (a JUnit failure's message, a heatmap cell's tip)."""
        lines = self._calibrated_lines(metrics) if self.calibrated else self._elementwise_lines(metrics)
        return "\n".join(lines)

    # --- the two forms ---

    def _elementwise_lines(self, metrics: Metrics) -> list[str]:
        return [f"Mismatched elements: {metrics.mismatched} / {metrics.numel} ({100 * metrics.mismatched_fraction:.1f}%)",
                f"Greatest absolute difference: {metrics.max_abs:.4g}{_at(metrics)} "
                f"(up to {self.atol:.3g} + {self.rtol:.3g}·|ref| allowed)"]

    def _calibrated_lines(self, metrics: Metrics) -> list[str]:
        compared = "<=" if metrics.rel_l2 <= self.max_rel_l2 else ">"
        headline = f"rel_l2 {metrics.rel_l2:.3g} {compared} bound {self.max_rel_l2:.3g}"
        ratio = self.noise_ratio(metrics)
        if ratio is not None:
            headline += f", {_times(ratio)}x the noise floor {self.noise_rel_l2:.3g}"
            noise = f"noise floor {self.noise_rel_l2:.3g}"
        else:   # a zero floor: a ratio to it says nothing
            headline += ": the candidate's precision computes this checkpoint exactly"
            noise = "noise floor 0: exact at this precision"
        if self.admits(metrics) and self._weighted_whole_within(metrics):
            verdict = (f": within the bound (the whole tensor's rel_l2, {metrics.rel_l2:.3g}, is held by a few "
                       f"positions that dwarf the rest, a massive activation; with each position counted once it is "
                       f"{metrics.position_weighted_rel_l2:.3g}, within {self.max_position_weighted_rel_l2:.3g})")
        elif self.admits(metrics) and self._weighted_position_within(metrics):
            verdict = (f": within the bound (the worst position, {metrics.position_rel_l2:.3g}, is a row one "
                       f"heavily weighted channel dominates; with each channel weighted by its scale it is "
                       f"{metrics.channel_position_rel_l2:.3g}, within {self.max_channel_position_rel_l2:.3g})")
        elif self.admits(metrics):
            verdict = ": within the bound"
        else:
            verdict = ": over the bound" if self._over(metrics) else ""
            verdict += "; the candidate has NaN or Inf where the reference has none" if metrics.new_nonfinite else ""
        return [headline,
                f"allowed: rel_l2 {self.max_rel_l2:.3g}, worst position {self.max_position_rel_l2:.3g} ({noise}); "
                f"got {metrics.rel_l2:.3g}, {metrics.position_rel_l2:.3g}{verdict}",
                f"Greatest absolute difference: {metrics.max_abs:.4g}{_at(metrics)}; "
                f"{metrics.mismatched}/{metrics.numel} elements mismatched"]

    def position_over(self, metrics: Metrics) -> bool:
        """The worst token position past its plain bound (a NaN is past it too)."""
        return not metrics.position_rel_l2 <= self.max_position_rel_l2

    def _weighted_position_within(self, metrics: Metrics) -> bool:
        """The worst position past its plain bound and within the channel-weighted one."""
        return (self.position_over(metrics) and metrics.channel_position_rel_l2 is not None
                and self.max_channel_position_rel_l2 is not None
                and metrics.channel_position_rel_l2 <= self.max_channel_position_rel_l2)

    def _weighted_whole_within(self, metrics: Metrics) -> bool:
        """The whole tensor past its plain bound and within the one that counts each position once."""
        return (not metrics.rel_l2 <= self.max_rel_l2 and self.max_position_weighted_rel_l2 is not None
                and metrics.position_weighted_rel_l2 is not None
                and metrics.position_weighted_rel_l2 <= self.max_position_weighted_rel_l2)

    def _over(self, metrics: Metrics) -> bool:
        """Either norm past its bound (a NaN norm is past it too)."""
        position_within = not self.position_over(metrics) or self._weighted_position_within(metrics)
        whole_within = metrics.rel_l2 <= self.max_rel_l2 or self._weighted_whole_within(metrics)
        return not (whole_within and position_within)


def one_line(explanation: str) -> str:
    """An explanation's lines on one line (a result's reason, a table cell, a test's message)."""
    return "; ".join(explanation.splitlines())


def _at(metrics: Metrics) -> str:
    return "" if metrics.worst_index is None else f" at index {tuple(metrics.worst_index)}"


def _times(ratio: float) -> str:
    """A ratio to the noise: two significant digits, whole numbers past 100 (no exponent)."""
    return f"{ratio:.2g}" if not math.isfinite(ratio) or ratio < 100 else f"{ratio:.0f}"
