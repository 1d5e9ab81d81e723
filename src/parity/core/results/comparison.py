"""What a layer-by-layer comparison found: one result per checkpoint, where the two first part ways,
which op introduced the error, the likely causes, and the checks past one forward pass.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from parity.core.results.decode import DecodeConsistency
from parity.core.results.findings import Diagnosis, NotChecked
from parity.core.results.generation import GenerationComparison
from parity.core.results.tolerance import Metrics, Tolerance, one_line

PASS, FAIL, NOT_COMPARABLE = "pass", "fail", "not_comparable"


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

    @property
    def explanation(self) -> tuple[str, ...]:
        """The one message, in lines: the tolerance's explanation of the metrics, with the reason after it
        where the reason says more (a routing, a layout); the reason alone where nothing was measured."""
        if self.metrics is None or self.tolerance is None:
            return (self.reason,) if self.reason else ()
        lines = tuple(self.tolerance.explain(self.metrics).splitlines())
        return lines + ((self.note,) if self.note else ())

    @property
    def note(self) -> str | None:
        """The reason where it adds to the tolerance's explanation; None where it is that explanation."""
        if self.reason is None or self.metrics is None or self.tolerance is None:
            return self.reason
        return None if self.reason.startswith(one_line(self.tolerance.explain(self.metrics))) else self.reason

    @property
    def noise_ratio(self) -> float | None:
        """rel_l2 over the noise floor, where the checkpoint was calibrated and the floor is not 0."""
        return None if self.metrics is None or self.tolerance is None else self.tolerance.noise_ratio(self.metrics)


@dataclass(frozen=True)
class Attribution:
    """A checkpoint's error split into what its inputs carried and what its own op added (core/propagation.py)."""

    inherited_rel_l2: float
    introduced_rel_l2: float
    gain: float
    inputs: tuple[str, ...]

    def __repr__(self) -> str:
        return f"<Attribution introduced={self.introduced_rel_l2:.3g} inherited={self.inherited_rel_l2:.3g}>"


@dataclass(frozen=True)
class Divergence:
    """Where the candidate first parts ways with the reference, in data-flow order."""

    checkpoint: str
    layer: int | None
    kind: str
    position: int | None                  # token position with the largest error
    per_position: tuple[float, ...] = ()  # rel_l2 of each token position
    onset: int | None = None              # the first token position over the checkpoint's per-position bound
    per_head: tuple[float, ...] = ()      # rel_l2 of each head (attention checkpoints)
    # the largest absolute differences, largest first: (index, reference value, candidate value, |difference|)
    worst_elements: tuple[tuple[tuple[int, ...], float, float, float], ...] = ()

    def __repr__(self) -> str:
        return f"<Divergence {self.checkpoint} position={self.position}>"


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
    decode: DecodeConsistency | None = None          # token-by-token decoding against the full pass
    generation: GenerationComparison | None = None   # a short greedy run
    not_checked: tuple[NotChecked, ...] = ()  # checks that could not run, each with its reason

    def __bool__(self) -> bool:
        return self.passed

    def __repr__(self) -> str:
        where = f", first divergence at {self.first_divergence.checkpoint}" if self.first_divergence else ""
        hidden = ", logits alone" if self.layers_hidden else ""
        return f"<Comparison {self.passed_count}/{len(self.checkpoints)} passed{where}{hidden}>"

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

    @property
    def layers_hidden(self) -> bool:
        """The candidate's layers could not be seen: its logits alone were compared (a function of token ids, a
        compiled blob)."""
        return any(item.check == "layers" for item in self.not_checked)

    @property
    def scope(self) -> str:
        """What the checkpoint count covers, where it is less than the layers: a verdict's tail."""
        return " (the logits alone: its layers could not be seen)" if self.layers_hidden else ""

    def result(self, name: str) -> CheckpointResult | None:
        return next((result for result in self.checkpoints if result.name == name), None)

    @property
    def tolerance_bases(self) -> tuple[str, ...]:
        """Where the tolerances came from, each basis once, in checkpoint order."""
        return tuple(dict.fromkeys(r.tolerance.basis for r in self.checkpoints if r.tolerance is not None))

    @property
    def calibration_basis(self) -> str | None:
        """The basis of the calibrated tolerances (what noise they were set from); None when none was calibrated."""
        return next((r.tolerance.basis for r in self.checkpoints if r.tolerance is not None and r.tolerance.calibrated),
                    None)
