"""compare(reference, candidate, *, config) -> Comparison.

Walks the checkpoints both traces hold in data-flow order, measures each, and
names the first that fails. A divergence is a result, never an exception.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from parity.core.calibrate import calibrated_tolerance
from parity.core.errors import OptionError, TraceError
from parity.core.layout import alignments, last_positions, last_rows
from parity.core.metrics import Measurement, channel_weighted_position_rel_l2, measure_pair
from parity.core.names import INDEX_KINDS, OUTPUTS_ONLY, Checkpoint, in_flow_order, is_raw, parse, select
from parity.core.positions import MATRIX_KIND, largest_differences, per_head_rel_l2
from parity.core.propagation import attribute, origin
from parity.core.routing import compare_experts
from parity.core.results import (
    FAIL,
    NOT_COMPARABLE,
    PASS,
    CheckpointResult,
    Comparison,
    Divergence,
    Metrics,
    NoiseFloor,
    Tolerance,
    one_line,
)
from parity.core.tolerances import default_tolerance_rule, lowest_precision
from parity.core.trace import Trace, layer_count


# Checkpoints a port may compute for the last positions only (nanoGPT's forward returns the last
# position's logits at inference): compared with the reference's last rows, with a note. Only the
# output: a hidden state with fewer positions is a token-count bug, which must stay visible.
TRUNCATABLE = frozenset({"logits"})


@dataclass(frozen=True)
class CompareConfig:
    tolerance: Tolerance | None = None   # the user's; None uses calibration or the per-dtype, per-kind table
    checkpoints: str | None = None       # comma-separated globs of names to compare
    dtype: str | None = None             # precision for default tolerances; inferred when None
    noise: Mapping[str, NoiseFloor] | None = None  # calibrated noise floors (core/calibrate.py)
    noise_dtype: str = "float32"         # the precision the noise floors were measured at
    noise_label: str | None = None       # what that precision is, when a dtype does not say it
    align: bool = True                   # read a candidate stored in another layout in the reference's (--strict)

    def __repr__(self) -> str:
        calibrated = f" calibrated at {self.noise_dtype}" if self.noise else ""
        return f"<CompareConfig tolerance={self.tolerance!r} checkpoints={self.checkpoints!r}{calibrated}>"


def compare(reference: Trace, candidate: Trace, *, config: CompareConfig = CompareConfig(),
            measured: Mapping[str, tuple[CheckpointResult, np.ndarray | None]] | None = None,
            streamed=None) -> Comparison:
    """Every checkpoint both traces hold, compared, in data-flow order, with where they first part ways.

    `measured`: the results of compare_checkpoint already taken where both models ran (on-device
    reduction), by name; their tensors are then not read. A failure's per-head view and worst
    elements still read the tensors, so a reduced comparison that failed is run again on full traces.
    `streamed` (core/streamed.StreamedCheckpoints): checkpoints neither trace holds, measured as the candidate
    made them;
    those it never gave are missing."""
    reference_names = select(reference.tensors, config.checkpoints)
    candidate_names = select(candidate.tensors, config.checkpoints)
    if streamed is not None:
        measured = {**(measured or {}), **{name: result for name, result in streamed.results().items()
                                           if select([name], config.checkpoints)}}
        reference_names = reference_names + select(streamed.reference.names, config.checkpoints)
        candidate_names = candidate_names + select(streamed.received, config.checkpoints)
    declared = _declared_not_comparable(candidate, set(reference_names) - set(candidate_names))
    common = set(reference_names) & set(candidate_names)
    order = in_flow_order(common | set(declared))
    measured = {name: measured[name] if measured is not None and name in measured
                else compare_checkpoint(name, reference, candidate, config)
                for name in order if name not in declared}
    for trace in (reference, candidate):   # the pass is done: what it kept mapped is not what comes next
        getattr(trace.tensors, "forget", lambda: None)()
    positions = {name: per_position for name, (_, per_position) in measured.items() if per_position is not None}
    results = tuple(declared[name] if name in declared else measured[name][0] for name in order)
    attributions = attribute(results, config.noise)
    first = next((result for result in results if result.failed), None)
    introduced_at = origin(results, attributions) if first is not None else None
    missing = set(reference_names) - set(candidate_names) - set(declared)
    extra = set(candidate_names) - set(reference_names)
    return Comparison(
        checkpoints=results,
        missing=tuple(in_flow_order(name for name in missing if not is_raw(name))),
        extra=tuple(in_flow_order(name for name in extra if not is_raw(name))),
        raw_unpaired=tuple(in_flow_order(name for name in missing | extra if is_raw(name))),
        first_divergence=_divergence(first, reference, candidate, positions),
        notes=tuple(_trace_notes(reference, candidate)) + tuple(_truncation_notes(results)),
        reference_metadata={**reference.metadata, **({"source": reference.source} if reference.source else {})},
        candidate_metadata={**candidate.metadata, **({"source": candidate.source} if candidate.source else {})},
        origin=_divergence(next((r for r in results if r.name == introduced_at), None), reference, candidate,
                           positions),
        attributions=attributions,
        position_matrix=_layer_position_matrix(reference, positions),
        calibrated=bool(config.noise),
    )


def require_compared(comparison: Comparison, reference: Trace, candidate: Trace, config: CompareConfig) -> None:
    """Raise when no checkpoint was compared: a comparison of nothing is never a pass."""
    if any(result.status != NOT_COMPARABLE for result in comparison.checkpoints):
        return
    where = f"{candidate.source or 'the candidate'} against {reference.source or 'the reference'}"
    reference_names = ", ".join(in_flow_order(reference.tensors)[:4]) or "none"
    candidate_names = ", ".join(in_flow_order(candidate.tensors)[:4]) or "none"
    shared = set(reference.tensors) & set(candidate.tensors)
    if config.checkpoints and shared:
        raise OptionError(f"--checkpoints '{config.checkpoints}' matches none of the {len(shared)} checkpoints "
                              f"both traces hold ({', '.join(in_flow_order(shared)[:4])}, ...); widen the pattern")
    declared = f" ({len(comparison.checkpoints)} declared not comparable)" if comparison.checkpoints else ""
    raise TraceError(f"{where}: no checkpoint could be compared{declared}: the reference holds {reference_names}, "
                     f"the candidate {candidate_names}; name the candidate's tensors as docs/trace-format.md lists")


def _declared_not_comparable(candidate: Trace, absent: set[str]) -> dict[str, CheckpointResult]:
    """Checkpoints the candidate's producer could not align exactly, with its reasons
    (trace metadata `not_comparable`: name -> reason)."""
    reasons = candidate.metadata.get("not_comparable") or {}
    return {
        name: CheckpointResult(name, NOT_COMPARABLE, shape_reference=(), shape_candidate=(), reason=str(reason))
        for name, reason in reasons.items()
        if name in absent
    }


def _layer_position_matrix(reference: Trace, positions: Mapping[str, np.ndarray]):
    """rel_l2 of each block output per token position: (layers, T); empty rows where a layer is absent."""
    return tuple(_as_tuple(positions.get(f"layers.{i}.{MATRIX_KIND}")) for i in range(layer_count(reference)))


def _as_tuple(per_position: np.ndarray | None) -> tuple[float, ...]:
    return () if per_position is None else tuple(per_position.tolist())


def _divergence(result: CheckpointResult | None, reference: Trace, candidate: Trace,
                positions: Mapping[str, np.ndarray]) -> Divergence | None:
    """Where `result` sits, with its error per token position and per head."""
    if result is None:
        return None
    checkpoint = parse(result.name) or Checkpoint(name=result.name, kind=result.name)
    per_position = _as_tuple(positions.get(result.name))
    return Divergence(
        checkpoint=result.name,
        layer=checkpoint.layer,
        kind=checkpoint.kind,
        position=result.metrics.worst_position if result.metrics else None,
        per_position=per_position,
        onset=onset_position(per_position, result.tolerance.position_bound(result.metrics)
                             if result.tolerance and result.metrics else None),
        per_head=per_head_rel_l2(result.name, reference, candidate) if result.name in reference else (),
        worst_elements=largest_differences(result.name, reference, candidate) if result.name in reference else (),
    )


def _misshapen(name: str, reference_shape: tuple[int, ...], candidate_shape: tuple[int, ...],
               tolerance=None) -> CheckpointResult:
    """A checkpoint whose two tensors no layout aligns: a failure, but for a raw.<module> output, which is
    what the module's first call made: a module called in a loop, or run by another implementation on one
    side (one chosen for the dtype), makes other shapes with nothing wrong. The checkpoints with a role carry
    the verdict there."""
    reason = f"shape mismatch: reference {list(reference_shape)}, candidate {list(candidate_shape)}"
    status = FAIL
    if is_raw(name):
        status = NOT_COMPARABLE
        reason += ("; this module ran otherwise on the two sides (called in a loop, or another implementation "
                   "chosen for the dtype): not compared")
    return CheckpointResult(name, status, tolerance=tolerance, shape_reference=reference_shape,
                            shape_candidate=candidate_shape, reason=reason)


IDS_DIFFER = "integer ids differ"   # how a raw output's differing selection is reported (report/raw.py)


def _integers(reference: Trace, candidate: Trace, name: str) -> bool:
    return all(trace.dtype_of(name).startswith(("int", "uint")) for trace in (reference, candidate))


def _selection_differs(name: str, reference_tensor, candidate_tensor) -> CheckpointResult:
    """A raw module output of integer ids that differ: a selection (the keys a sparse attention's indexer keeps,
    the experts a router picks), whose ids are labels, not magnitudes, and which a near tie of the scores behind
    it selects otherwise at a low precision (a correct bfloat16 AXK2 indexer picked one other key at one token).
    Not a failure by itself: what the selection feeds is compared by the checkpoints after it, which carry the
    verdict."""
    differ = np.asarray(reference_tensor) != np.asarray(candidate_tensor)
    while differ.ndim > 2 and differ.shape[0] == 1:   # (1, T, k): a batch of one
        differ = differ[0]
    rows = differ.reshape(differ.shape[0], -1).any(axis=1) if differ.ndim > 1 else differ
    first = int(np.flatnonzero(rows)[0])
    reordered = _same_in_each_row(np.asarray(reference_tensor), np.asarray(candidate_tensor))
    reason = (f"{IDS_DIFFER} at {int(differ.sum())} of {differ.size} entries ({int(rows.sum())} of {len(rows)} "
              f"rows, first at row {first}{'; the same ids in each row, in another order' if reordered else ''}): "
              "a selection, whose ids are labels, not magnitudes; what it selects is compared by the checkpoints "
              "that read it")
    return CheckpointResult(name, NOT_COMPARABLE, reason=reason, shape_reference=tuple(reference_tensor.shape),
                            shape_candidate=tuple(candidate_tensor.shape))


def _same_in_each_row(reference_ids: np.ndarray, candidate_ids: np.ndarray) -> bool:
    return reference_ids.ndim > 0 and np.array_equal(np.sort(reference_ids, axis=-1), np.sort(candidate_ids, axis=-1))


def _admitted_without_positions(name: str, shape: tuple[int, ...], tokens, metrics, tolerance) -> bool:
    """A raw module output whose rows are not token positions (Qwen3.5's gated delta-rule norm runs on (token,
    head) rows, 384 for 12 tokens) is held to its calibrated rel_l2 alone: one row of a few values is no
    position, and its noise in one calibration run says little (a correct candidate failed on one such row)."""
    if not is_raw(name) or not tokens or not shape or shape[0] == len(tokens) or not tolerance.calibrated:
        return False
    return not metrics.new_nonfinite and metrics.rel_l2 <= tolerance.max_rel_l2


def onset_position(per_position: tuple[float, ...], bound: float | None) -> int | None:
    """The first token position whose error is over `bound` (a non-finite error counts): where along the
    sequence the divergence begins, which may lie far before its worst position."""
    if not per_position or bound is None:
        return None
    over = ~(np.asarray(per_position) <= bound)
    return int(np.argmax(over)) if over.any() else None


def compare_checkpoint(name: str, reference: Trace, candidate: Trace,
                       config: CompareConfig) -> tuple[CheckpointResult, np.ndarray | None]:
    """The checkpoint's result, and its rel_l2 per token position (T,) where the two hold the same positions
    (kept as an array: a trace of tens of thousands of checkpoints holds all of them until the end)."""
    reference_shape, candidate_shape = reference.shape_of(name), candidate.shape_of(name)
    truncated = name in TRUNCATABLE and last_positions(reference_shape, candidate_shape)
    if math.prod(reference_shape) != math.prod(candidate_shape) and not truncated:
        # no layout can align them: decided from the headers, neither tensor is read
        return _misshapen(name, reference_shape, candidate_shape), None
    checkpoint = parse(name) or Checkpoint(name=name, kind=name)
    if checkpoint.kind in INDEX_KINDS:  # integer ids: agreement, not a norm of a difference
        return compare_experts(name, reference, candidate, (config.noise or {}).get(name)), None
    reference_tensor, candidate_tensor = reference[name], candidate[name]
    if is_raw(name) and _integers(reference, candidate, name) and reference_shape == candidate_shape \
            and not np.array_equal(reference_tensor, candidate_tensor):
        return _selection_differs(name, reference_tensor, candidate_tensor), None
    dtype = config.dtype or lowest_precision(
        reference.metadata.get("dtype"), candidate.metadata.get("dtype"),
        reference.dtype_of(name), candidate.dtype_of(name),
    )
    tolerance = config.tolerance
    if tolerance is None and config.noise and name in config.noise:
        tolerance = calibrated_tolerance(config.noise[name], config.noise_dtype, config.noise_label)
    rule = tolerance if tolerance is not None else default_tolerance_rule(checkpoint.kind, dtype)
    shapes = {"shape_reference": tuple(reference_tensor.shape), "shape_candidate": tuple(candidate_tensor.shape)}
    kept = last_positions(reference_tensor.shape, candidate_tensor.shape) if name in TRUNCATABLE else 0
    if kept:  # the candidate holds the last position(s) only: compare those
        reference_tensor = last_rows(reference_tensor, kept, checkpoint.token_axis)

    best: tuple[Measurement, str, object] | None = None
    for alignment in alignments(reference_tensor.shape, candidate_tensor) if config.align or \
            reference_tensor.shape == candidate_tensor.shape else ():
        measurement = measure_pair(reference_tensor, alignment.candidate, rule, token_axis=checkpoint.token_axis)
        if best is None or _better(measurement.metrics, best[0].metrics):
            best = (measurement, alignment.describe(), alignment.candidate)
    if best is None:
        return _misshapen(name, tuple(reference_tensor.shape), tuple(candidate_tensor.shape), tolerance), None

    measurement, layout, aligned = best
    metrics, tolerance = measurement.metrics, measurement.tolerance
    if _needs_weighted_position(metrics, tolerance):
        metrics = dataclasses.replace(metrics, channel_position_rel_l2=channel_weighted_position_rel_l2(
            reference_tensor, aligned, checkpoint.token_axis))
    same_positions = reference_tensor.shape == candidate_tensor.shape and not kept
    per_position = measurement.per_position if same_positions else None
    status = PASS if tolerance.admits(metrics) or _admitted_without_positions(
        name, reference_tensor.shape, reference.tokens, metrics, tolerance) else FAIL
    reshaped = reference_tensor.shape != candidate_tensor.shape
    reason = None
    if status == FAIL:
        reason = one_line(tolerance.explain(metrics))
        if reshaped:
            reason += f"; in the best alignment of shape {list(candidate_tensor.shape)} ({layout})"
    return CheckpointResult(
        name, status, metrics=metrics, tolerance=tolerance, layout=layout if reshaped else None, reason=reason, **shapes
    ), per_position


def _needs_weighted_position(metrics: Metrics, tolerance: Tolerance) -> bool:
    """Only a calibrated check that fails on its worst position alone reads the channel-weighted one."""
    return (tolerance.calibrated and tolerance.max_channel_position_rel_l2 is not None
            and metrics.rel_l2 <= tolerance.max_rel_l2 and tolerance.position_over(metrics))


def _better(metrics: Metrics, incumbent: Metrics) -> bool:
    return (_finite_or_inf(metrics.rel_l2), metrics.mismatched) < (_finite_or_inf(incumbent.rel_l2), incumbent.mismatched)


def _finite_or_inf(value: float) -> float:
    return value if np.isfinite(value) else float("inf")


def _trace_notes(reference: Trace, candidate: Trace) -> list[str]:
    notes = _outputs_only_notes(reference)
    if reference.tokens is not None and candidate.tokens is not None and reference.tokens != candidate.tokens:
        notes.append(
            f"the traces were made from different token ids: reference has {len(reference.tokens)}, "
            f"candidate {len(candidate.tokens)}; first difference at position "
            f"{_first_difference(reference.tokens, candidate.tokens)}"
        )
    return notes


def _outputs_only_notes(reference: Trace) -> list[str]:
    """Layers the reference's capture mapped by their output alone (capture/hf/structure.py), each reason once."""
    layers = (reference.metadata.get("architecture") or {}).get("layers")
    by_reason: dict[str, list[int]] = {}
    for i, facts in enumerate(layers if isinstance(layers, list) else ()):
        reason = facts.get(OUTPUTS_ONLY) if isinstance(facts, dict) else None
        if isinstance(reason, str):
            by_reason.setdefault(reason, []).append(i)
    return [f"{_layer_list(indices)}: only the output is a named checkpoint ({reason}); what the layer does "
            "inside is compared as raw module outputs where both sides are the same classes"
            for reason, indices in by_reason.items()]


def _layer_list(indices: list[int]) -> str:
    shown = ", ".join(str(i) for i in indices[:8]) + (f" and {len(indices) - 8} more" if len(indices) > 8 else "")
    return f"layer {shown}" if len(indices) == 1 else f"layers {shown}"


def _truncation_notes(results) -> list[str]:
    notes = []
    for result in results:
        kept = last_positions(result.shape_reference, result.shape_candidate) if result.name in TRUNCATABLE else 0
        if kept:
            notes.append(f"the candidate's {result.name} tensor holds the last {kept} of {result.shape_reference[0]} "
                         f"positions ({list(result.shape_candidate)} for {list(result.shape_reference)}): compared "
                         f"with the reference's last {'row' if kept == 1 else f'{kept} rows'} only")
    return notes


def _first_difference(reference: list[int], candidate: list[int]) -> int:
    for position, (reference_id, candidate_id) in enumerate(zip(reference, candidate)):
        if reference_id != candidate_id:
            return position
    return min(len(reference), len(candidate))
