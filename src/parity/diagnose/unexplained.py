"""no_known_cause: a failure that no detector explains, with the evidence a person needs next.

Where the error sits (per token position, per head, per channel), how far the best
scalar and affine fits of the reference go towards the candidate, and which of
the reference's other checkpoints the error points along. It is reported only when
the comparison failed and no detector named a cause: never "precision noise".
"""

from __future__ import annotations

import numpy as np

from parity.core.names import HEAD_KINDS, in_flow_order, inputs_of, parse
from parity.core.results import Diagnosis
from parity.diagnose.context import Context

TOP = 3               # how many positions, heads, channels and checkpoints to name
CONCENTRATED = 0.5    # a share of the error energy this large in few places is worth saying
CORRELATED = 0.5      # |cosine| between the error and another checkpoint worth naming


def no_known_cause(context: Context) -> Diagnosis | None:
    where = context.comparison.origin or context.comparison.first_divergence
    if where is None:
        return None
    name = where.checkpoint
    parts = [f"no detector explains the error at {name}"]
    pair = context.pair(name)
    result = context.comparison.result(name)
    if pair is None:
        shapes = f" ({result.reason})" if result is not None and result.reason else ""
        parts.append(f"its tensors cannot be compared element by element{shapes}")
        return Diagnosis("no_known_cause", name, "; ".join(parts))
    reference, candidate = pair
    checkpoint = parse(name)
    error = candidate - reference
    parts += [_inputs(context, name), _per_position(error, checkpoint), _per_head(error, checkpoint, context), _per_channel(error, checkpoint),
              _fits(reference, candidate), _correlated(error, name, context)]
    return Diagnosis("no_known_cause", name, "; ".join(part for part in parts if part))


def _inputs(context: Context, name: str) -> str:
    """Whether the checkpoint's inputs pass: then the error starts in the op that makes it."""
    results = [context.comparison.result(source) for source in inputs_of(name, context.reference.tensors)]
    results = [result for result in results if result is not None]
    if not results:
        return ""
    failed = [result.name for result in results if not result]
    if failed:
        return f"its input {', '.join(failed)} fails too"
    return (f"its input {', '.join(r.name for r in results)} passes: the error starts in the op that makes "
            f"{name} (its weights or their conversion; --weights compares them)")


def _rows(tensor: np.ndarray, axis: int) -> np.ndarray:
    return np.moveaxis(tensor, axis, 0).reshape(tensor.shape[axis], -1)


def _shares(energy: np.ndarray) -> tuple[np.ndarray, float]:
    """Indices of the (at most TOP) largest entries that hold a visible share, and the share they hold."""
    total = float(energy.sum()) or 1.0
    top = np.argsort(energy)[::-1][:TOP]
    top = top[: max(1, int(np.sum(energy[top] >= 0.05 * total)))]
    return top, float(energy[top].sum()) / total


def _per_position(error: np.ndarray, checkpoint) -> str:
    axis = checkpoint.token_axis if checkpoint else 0
    if error.ndim <= axis or error.shape[axis] < 2:
        return ""
    energy = (_rows(error, axis) ** 2).sum(1)
    top, share = _shares(energy)
    trend = np.corrcoef(np.arange(len(energy)), energy)[0, 1] if np.std(energy) > 0 else 0.0
    grows = " and grows with the position" if trend > 0.8 else ""
    where = (f"concentrated at positions {top.tolist()} ({share:.0%} of it)" if share >= CONCENTRATED and len(energy) > 2 * TOP
             else f"spread over the {len(energy)} positions (largest at {int(top[0])})")
    return f"per position: {where}{grows}"


def _per_head(error: np.ndarray, checkpoint, context: Context) -> str:
    heads = context.config.heads
    if checkpoint is None or not heads:
        return ""
    if checkpoint.kind == "attn_probs" and error.ndim == 3:
        energy = (error.reshape(error.shape[0], -1) ** 2).sum(1)
    elif checkpoint.kind in HEAD_KINDS and error.ndim == 2 and context.config.head_dim \
            and error.shape[-1] % context.config.head_dim == 0:
        energy = (error.reshape(error.shape[0], -1, context.config.head_dim) ** 2).sum((0, 2))
    else:
        return ""
    top, share = _shares(energy)
    if len(energy) > 1 and energy[top[0]] / (energy.sum() or 1.0) >= CONCENTRATED:
        return f"per head: head {int(top[0])} holds {energy[top[0]] / energy.sum():.0%} of the error"
    return f"per head: spread over all {len(energy)} heads"


def _per_channel(error: np.ndarray, checkpoint) -> str:
    if error.ndim != 2 or (checkpoint is not None and checkpoint.kind == "attn_probs"):
        return ""
    energy = (error ** 2).sum(0)
    top, share = _shares(energy)
    if share >= CONCENTRATED and len(energy) > 4 * TOP:
        return f"per channel: channels {top.tolist()} hold {share:.0%} of it"
    return f"per channel: spread over the {len(energy)} channels"


def _fits(reference: np.ndarray, candidate: np.ndarray) -> str:
    """How much of the error the best candidate ~ c * reference and candidate ~ a * reference + b leave."""
    norm = float(np.linalg.norm(reference)) or 1.0
    before = float(np.linalg.norm(candidate - reference)) / norm          # every residual relative to ||reference||
    scale = float(np.sum(candidate * reference)) / norm**2
    scalar = float(np.linalg.norm(candidate - scale * reference)) / norm
    design = np.stack([reference.ravel(), np.ones(reference.size)], axis=1)
    (slope, intercept), *_ = np.linalg.lstsq(design, candidate.ravel(), rcond=None)
    affine = float(np.linalg.norm(candidate - slope * reference - intercept)) / norm
    return (f"best scalar fit candidate = {scale:.4g} x reference leaves rel_l2 {scalar:.3g} of {before:.3g}; "
            f"best affine fit {slope:.4g} x reference {intercept:+.3g} leaves {affine:.3g}")


def _correlated(error: np.ndarray, name: str, context: Context) -> str:
    """The reference's checkpoints of the same shape that the error points along (|cosine| over the
    token positions that carry the error, so that an error at one position is not diluted)."""
    checkpoint = parse(name)
    axis = checkpoint.token_axis if checkpoint is not None and error.ndim > 1 else 0
    energy = (_rows(error, axis) ** 2).sum(1)
    carrying = energy >= 0.01 * energy.max(initial=0.0)
    error = _rows(error, axis)[carrying]
    norm = float(np.linalg.norm(error))
    if norm == 0:
        return ""
    found = []
    for other in in_flow_order(context.reference.names):
        if other == name or parse(other) is None or context.reference[other].shape != context.reference[name].shape:
            continue
        tensor = _rows(context.reference[other].astype(np.float64), axis)[carrying]
        other_norm = float(np.linalg.norm(tensor))
        if other_norm:
            found.append((abs(float(np.sum(error * tensor))) / (norm * other_norm), other))
    found = sorted((pair for pair in found if pair[0] >= CORRELATED), reverse=True)[:TOP]
    if not found:
        return "the error is not aligned with any other checkpoint of the reference"
    return "the error points along " + ", ".join(f"{other} (|cosine| {cosine:.2f})" for cosine, other in found)
