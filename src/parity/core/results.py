"""The report model: what a comparison found, as frozen dataclasses.

Reports (console, JSON, HTML) read these and never compute. `bool(result)`
means passed; `repr(result)` is one line.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from parity.core.propagation import Attribution

PASS, FAIL, NOT_COMPARABLE = "pass", "fail", "not_comparable"


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

    def __repr__(self) -> str:
        if self.calibrated:
            return f"<Tolerance rel_l2<={self.max_rel_l2:.3g} (noise {self.noise_rel_l2:.3g}, {self.basis})>"
        return f"<Tolerance atol={self.atol:.3g} rtol={self.rtol:.3g} ({self.basis})>"

    @property
    def calibrated(self) -> bool:
        return self.max_rel_l2 is not None

    def admits(self, metrics: "Metrics") -> bool:
        """Whether the candidate's error at a checkpoint is within this tolerance."""
        if not self.calibrated:
            return metrics.mismatched == 0
        new_nonfinite = (metrics.nan_candidate + metrics.inf_candidate) > (metrics.nan_reference + metrics.inf_reference)
        return (not new_nonfinite and metrics.rel_l2 <= self.max_rel_l2
                and metrics.position_rel_l2 <= self.max_position_rel_l2)


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

    def __repr__(self) -> str:
        return (
            f"<Metrics max_abs={self.max_abs:.3g} rel_l2={self.rel_l2:.3g} "
            f"cosine={self.cosine:.6f} mismatched={self.mismatched}/{self.numel}>"
        )

    @property
    def mismatched_fraction(self) -> float:
        return self.mismatched / self.numel if self.numel else 0.0


@dataclass(frozen=True)
class CheckpointResult:
    name: str
    status: str                          # "pass" | "fail" | "not_comparable"
    shape_reference: tuple[int, ...]
    shape_candidate: tuple[int, ...]
    metrics: Metrics | None = None
    tolerance: Tolerance | None = None
    layout: str | None = None            # how the candidate was aligned, when it was
    reason: str | None = None            # why it failed or could not be compared

    def __repr__(self) -> str:
        detail = f" rel_l2={self.metrics.rel_l2:.3g}" if self.metrics else ""
        return f"<CheckpointResult {self.name} {self.status}{detail}>"

    def __bool__(self) -> bool:
        return self.status != FAIL

    @property
    def failed(self) -> bool:
        return self.status == FAIL


@dataclass(frozen=True)
class Divergence:
    """Where the candidate first parts ways with the reference, in data-flow order."""

    checkpoint: str
    layer: int | None
    kind: str
    position: int | None                  # token position with the largest error
    per_position: tuple[float, ...] = ()  # rel_l2 of each token position
    per_head: tuple[float, ...] = ()      # rel_l2 of each head (attention checkpoints)
    # the largest absolute differences, largest first: (index, reference value, candidate value, |difference|)
    worst_elements: tuple[tuple[tuple[int, ...], float, float, float], ...] = ()

    def __repr__(self) -> str:
        return f"<Divergence {self.checkpoint} position={self.position}>"


@dataclass(frozen=True)
class Diagnosis:
    """A likely cause, named from evidence in the tensors."""

    cause: str
    checkpoint: str
    message: str
    # "confirmed": the cause's inverse applied to the candidate restores the reference within tolerance;
    # "likely": it explains most of the error, not all; None: a cause with no inverse to apply
    confidence: str | None = None

    def __repr__(self) -> str:
        return f"<Diagnosis {self.cause} at {self.checkpoint}>"


@dataclass(frozen=True)
class NotChecked:
    """A check that could not run (or was not asked for), and why: never a silent pass."""

    check: str      # one of CHECKS
    reason: str

    def __repr__(self) -> str:
        return f"<NotChecked {self.check}: {self.reason}>"


NOT_ASKED = "not asked for"   # the reason of an opt-in check left off, followed by ": " and what it does

# The checks beyond one forward pass that `parity check` runs when it can, in report order.
CHECKS = ("calibration", "weights", "replay", "greedy", "decode", "kv_cache", "chunked_prefill", "padding")


@dataclass(frozen=True)
class Comparison:
    checkpoints: tuple[CheckpointResult, ...]
    missing: tuple[str, ...]             # in the reference, not the candidate
    extra: tuple[str, ...]               # in the candidate, not the reference
    first_divergence: Divergence | None
    raw_unpaired: tuple[str, ...] = ()   # raw.<module> outputs held by one side only (not compared)
    diagnoses: tuple[Diagnosis, ...] = ()
    notes: tuple[str, ...] = ()          # findings outside any one checkpoint
    reference_metadata: dict[str, Any] = field(default_factory=dict)
    candidate_metadata: dict[str, Any] = field(default_factory=dict)
    origin: Divergence | None = None     # the first op that adds more error than its tolerance allows
    attributions: Mapping[str, Attribution] = field(default_factory=dict)  # introduced vs inherited error
    position_matrix: tuple[tuple[float, ...], ...] = ()  # rel_l2 of layers.{i}.out per token position
    local_rel_l2: Mapping[str, float] = field(default_factory=dict)  # replay: each op's error on the reference's inputs
    block_local_rel_l2: Mapping[int, float] = field(default_factory=dict)  # replay: each block's, on its reference input
    calibrated: bool = False
    decode: Any = None        # DecodeConsistency: token-by-token decoding against the full pass
    generation: Any = None    # GenerationComparison: a short greedy run
    not_checked: tuple[NotChecked, ...] = ()  # checks that could not run, each with its reason

    def __bool__(self) -> bool:
        return self.passed

    def __repr__(self) -> str:
        where = f", first divergence at {self.first_divergence.checkpoint}" if self.first_divergence else ""
        return f"<Comparison {self.passed_count}/{len(self.checkpoints)} passed{where}>"

    @property
    def passed(self) -> bool:
        beyond_one_pass = all(part is None or bool(part) for part in (self.decode, self.generation))
        return beyond_one_pass and not any(result.failed for result in self.checkpoints)

    @property
    def verdict(self) -> str:
        return PASS if self.passed else FAIL

    @property
    def passed_count(self) -> int:
        return sum(result.status == PASS for result in self.checkpoints)

    @property
    def failed_count(self) -> int:
        return sum(result.failed for result in self.checkpoints)

    def result(self, name: str) -> CheckpointResult | None:
        return next((result for result in self.checkpoints if result.name == name), None)
