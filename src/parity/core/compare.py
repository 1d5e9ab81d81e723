"""compare(reference, candidate, *, config) -> Comparison.

Walks the checkpoints both traces hold in data-flow order, measures each, and
names the first that fails. A divergence is a result, never an exception.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from parity.core.layout import alignments
from parity.core.metrics import measure
from parity.core.names import Checkpoint, in_flow_order, parse, select
from parity.core.results import (
    FAIL,
    NOT_COMPARABLE,
    PASS,
    CheckpointResult,
    Comparison,
    Divergence,
    Metrics,
    Tolerance,
)
from parity.core.tolerances import default_tolerance, lowest_precision
from parity.core.trace import Trace


@dataclass(frozen=True)
class CompareConfig:
    tolerance: Tolerance | None = None   # the user's; None uses the per-dtype, per-kind table
    checkpoints: str | None = None       # comma-separated globs of names to compare
    dtype: str | None = None             # precision for default tolerances; inferred when None

    def __repr__(self) -> str:
        return f"<CompareConfig tolerance={self.tolerance!r} checkpoints={self.checkpoints!r} dtype={self.dtype!r}>"


def compare(reference: Trace, candidate: Trace, *, config: CompareConfig = CompareConfig()) -> Comparison:
    reference_names = select(reference.tensors, config.checkpoints)
    candidate_names = select(candidate.tensors, config.checkpoints)
    declared = _declared_not_comparable(candidate, set(reference_names) - set(candidate_names))
    common = set(reference_names) & set(candidate_names)
    results = tuple(
        declared[name] if name in declared else _compare_checkpoint(name, reference, candidate, config)
        for name in in_flow_order(common | set(declared))
    )
    return Comparison(
        checkpoints=results,
        missing=tuple(in_flow_order(set(reference_names) - set(candidate_names) - set(declared))),
        extra=tuple(in_flow_order(set(candidate_names) - set(reference_names))),
        first_divergence=first_divergence(results),
        notes=tuple(_trace_notes(reference, candidate)),
        reference_metadata=dict(reference.metadata),
        candidate_metadata=dict(candidate.metadata),
    )


def _declared_not_comparable(candidate: Trace, absent: set[str]) -> dict[str, CheckpointResult]:
    """Checkpoints the candidate's producer could not align exactly, with its reasons
    (trace metadata `not_comparable`: name -> reason)."""
    reasons = candidate.metadata.get("not_comparable") or {}
    return {
        name: CheckpointResult(name, NOT_COMPARABLE, shape_reference=(), shape_candidate=(), reason=str(reason))
        for name, reason in reasons.items()
        if name in absent
    }


def first_divergence(results: tuple[CheckpointResult, ...]) -> Divergence | None:
    """The earliest failing checkpoint; `results` are already in data-flow order."""
    for result in results:
        if result.failed:
            checkpoint = parse(result.name) or Checkpoint(name=result.name, kind=result.name)
            position = result.metrics.worst_position if result.metrics else None
            return Divergence(result.name, checkpoint.layer, checkpoint.kind, position)
    return None


def _compare_checkpoint(name: str, reference: Trace, candidate: Trace, config: CompareConfig) -> CheckpointResult:
    reference_tensor, candidate_tensor = reference[name], candidate[name]
    checkpoint = parse(name) or Checkpoint(name=name, kind=name)
    dtype = config.dtype or lowest_precision(
        reference.metadata.get("dtype"), candidate.metadata.get("dtype"),
        reference.dtype_of(name), candidate.dtype_of(name),
    )
    tolerance = config.tolerance or default_tolerance(checkpoint.kind, dtype, reference_tensor)
    shapes = {"shape_reference": tuple(reference_tensor.shape), "shape_candidate": tuple(candidate_tensor.shape)}

    best: tuple[Metrics, str] | None = None
    for alignment in alignments(reference_tensor.shape, candidate_tensor):
        metrics = measure(reference_tensor, alignment.candidate, tolerance, token_axis=checkpoint.token_axis)
        if best is None or _better(metrics, best[0]):
            best = (metrics, alignment.describe())
    if best is None:
        reason = f"shape mismatch: reference {list(reference_tensor.shape)}, candidate {list(candidate_tensor.shape)}"
        return CheckpointResult(name, FAIL, tolerance=tolerance, reason=reason, **shapes)

    metrics, layout = best
    status = PASS if metrics.mismatched == 0 else FAIL
    reshaped = reference_tensor.shape != candidate_tensor.shape
    reason = None
    if status == FAIL:
        reason = f"{metrics.mismatched}/{metrics.numel} elements outside tolerance"
        if reshaped:
            reason += f" in the best alignment of shape {list(candidate_tensor.shape)} ({layout})"
    return CheckpointResult(
        name, status, metrics=metrics, tolerance=tolerance, layout=layout if reshaped else None, reason=reason, **shapes
    )


def _better(metrics: Metrics, incumbent: Metrics) -> bool:
    return (metrics.mismatched, _finite_or_inf(metrics.rel_l2)) < (incumbent.mismatched, _finite_or_inf(incumbent.rel_l2))


def _finite_or_inf(value: float) -> float:
    return value if np.isfinite(value) else float("inf")


def _trace_notes(reference: Trace, candidate: Trace) -> list[str]:
    notes = []
    if reference.tokens is not None and candidate.tokens is not None and reference.tokens != candidate.tokens:
        notes.append(
            f"the traces were made from different token ids: reference has {len(reference.tokens)}, "
            f"candidate {len(candidate.tokens)}; first difference at position "
            f"{_first_difference(reference.tokens, candidate.tokens)}"
        )
    return notes


def _first_difference(reference: list[int], candidate: list[int]) -> int:
    for position, (reference_id, candidate_id) in enumerate(zip(reference, candidate)):
        if reference_id != candidate_id:
            return position
    return min(len(reference), len(candidate))
