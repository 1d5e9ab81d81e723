"""no_known_cause: a failure that no detector explains, with the evidence a person needs next.

What was ruled out (the hypotheses the detectors tried at the checkpoint, and the
nearest of them), whether the op's defining identity holds on the candidate's own
tensors, where the error sits (per token position, per head, per channel), how far
the best scalar and affine fits of the reference go towards the candidate, and
which of the reference's other checkpoints the error points along. The hint for
where to look fits the op: weights only for an op that has them. It is reported
only when the comparison failed and no detector named a cause: never "precision noise".
"""

from __future__ import annotations

import math

import numpy as np

from parity.core.names import HEAD_KINDS, in_flow_order, inputs_of, parse
from parity.core.results import NOT_COMPARABLE, Diagnosis
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
    parts += [_inputs(context, name), _identities(context, name), _ruled_out(context, name, checkpoint),
              _per_position(error, checkpoint), _per_head(error, checkpoint, context), _per_channel(error, checkpoint),
              _fits(reference, candidate), _correlated(error, name, context)]
    return Diagnosis("no_known_cause", name, "; ".join(part for part in parts if part))


# What the op that makes each kind is, for the hint: where to look when its inputs pass.
WEIGHTED = "its weights or their conversion; --weights compares them"
OP_HINTS = {
    "attn_norm": "the norm: its weight, epsilon or formula", "mlp_norm": "the norm: its weight, epsilon or formula",
    "final_norm": "the norm: its weight, epsilon or formula", "q_norm": "the per-head norm: its weight, epsilon or axis",
    "k_norm": "the per-head norm: its weight, epsilon or axis",
    "attn_post_norm": "the norm: its weight, epsilon or formula", "mlp_post_norm": "the norm: its weight, epsilon or formula",
    "q_rope": "the rotation (it has no weights): its angles, positions or pair layout",
    "k_rope": "the rotation (it has no weights): its angles, positions or pair layout",
    "attn_probs": "the scores' scale, the mask or the softmax (no weights)",
    "attn_ctx": "the product of the probabilities with v, or how the heads are merged (no weights)",
    "resid_mid": "the residual add (no weights): what is added, and how", "out": "the residual add (no weights): what is added, and how",
    "mlp_act": "the activation or the gated product (no weights)",
    "embed": "the embedding lookup, its scale, or the position rows added to it",
    "moe_experts": "the choice of experts from the router's logits (no weights)",
}
# Hypotheses each mechanism tries, by the kind of the checkpoint: what a no_known_cause has ruled out.
RULED_OUT = {
    "q_rope": "RoPE fitted as theta, scaling type and factor, position offset, direction and pair layout",
    "k_rope": "RoPE fitted as theta, scaling type and factor, position offset, direction and pair layout",
    "attn_probs": "the mask's band (causal offset, window), the score scale, the KV head map, the softmax's axis, "
                  "head order",
    "attn_ctx": "probs @ v under both head maps, operands exchanged, head order and merge layout",
    "mlp_act": "the activation function and where it is applied, operands exchanged or left out",
    "resid_mid": "each term of the sum, its scale, and other tensors in its place",
    "out": "each term of the sum, its scale, and other tensors in its place",
}
NORM_RULED_OUT = "epsilon, weight convention (w or 1 + w), weight applied, centring, grouping, another input or weight"
GENERAL_RULED_OUT = "a scale, a sign, a constant offset, a token shift, axes or heads permuted, another checkpoint"


def _ruled_out(context: Context, name: str, checkpoint) -> str:
    """What the detectors tried here and found wanting, and the nearest of it."""
    kind = checkpoint.kind if checkpoint is not None else ""
    tried = RULED_OUT.get(kind, NORM_RULED_OUT if kind.endswith("norm") else "")
    text = f"ruled out: {tried + '; ' if tried else ''}{GENERAL_RULED_OUT}"
    near = [(left, what) for at, what, left, before in context.tried if at == name and math.isfinite(left) and left < before]
    if near:
        left, what = min(near)
        before = next(b for at, w, l, b in context.tried if at == name and w == what and l == left)
        text += f"; the nearest: {what}, which leaves rel_l2 {left:.2g} of {before:.2g}"
    return text


def _identities(context: Context, name: str) -> str:
    """Whether the op's defining identity holds on the candidate's own tensors."""
    from parity.diagnose.identities import checks

    found = checks(context, name)
    if not found:
        return ""
    return "; ".join(check.describe() + ("" if check.failed else ": the op computes it from its inputs as the model "
                                         "does, so the error comes with an input")
                     for check in found)


def _inputs(context: Context, name: str) -> str:
    """Whether the checkpoint's inputs pass: then the error starts in the op that makes it."""
    results = [context.comparison.result(source) for source in inputs_of(name, context.reference.tensors)]
    results = [result for result in results if result is not None]
    if not results:
        return ""
    failed = [result.name for result in results if not result]
    if failed:
        return f"its input {', '.join(failed)} fails too"
    unknown = [result.name for result in results if result.status == NOT_COMPARABLE]
    if unknown:
        return (f"its input {', '.join(unknown)} is not comparable: the error starts there or in the op that makes "
                f"{name}")
    checkpoint = parse(name)
    hint = OP_HINTS.get(checkpoint.kind, WEIGHTED) if checkpoint is not None else WEIGHTED
    return f"its input {', '.join(r.name for r in results)} passes: the error starts in the op that makes {name} ({hint})"


def _rows(tensor: np.ndarray, axis: int) -> np.ndarray:
    return np.moveaxis(tensor, axis, 0).reshape(tensor.shape[axis], -1)


def _row_squares(rows: np.ndarray) -> np.ndarray:
    """Sum of squares of each row, without squaring the whole tensor first."""
    return np.einsum("ij,ij->i", rows, rows)


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
    energy = _row_squares(_rows(error, axis))
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
        energy = _row_squares(error.reshape(error.shape[0], -1))
    elif checkpoint.kind in HEAD_KINDS and error.ndim == 2 and context.config.head_dim \
            and error.shape[-1] % context.config.head_dim == 0:
        heads = error.reshape(error.shape[0], -1, context.config.head_dim)                  # (T, H, hd)
        energy = np.einsum("thd,thd->h", heads, heads)
    else:
        return ""
    top, share = _shares(energy)
    if len(energy) > 1 and energy[top[0]] / (energy.sum() or 1.0) >= CONCENTRATED:
        return f"per head: head {int(top[0])} holds {energy[top[0]] / energy.sum():.0%} of the error"
    return f"per head: spread over all {len(energy)} heads"


def _per_channel(error: np.ndarray, checkpoint) -> str:
    if error.ndim != 2 or (checkpoint is not None and checkpoint.kind == "attn_probs"):
        return ""
    energy = np.einsum("tc,tc->c", error, error)
    top, share = _shares(energy)
    if share >= CONCENTRATED and len(energy) > 4 * TOP:
        return f"per channel: channels {top.tolist()} hold {share:.0%} of it"
    return f"per channel: spread over the {len(energy)} channels"


def _fits(reference: np.ndarray, candidate: np.ndarray) -> str:
    """How much of the error the best candidate ~ c * reference and candidate ~ a * reference + b leave.
    The fits come from sums of products (the normal equations) and each residual is summed in chunks:
    no temporary of the tensor's size."""
    reference, candidate = reference.reshape(-1), candidate.reshape(-1)
    count = reference.size
    reference_squares, cross = float(np.dot(reference, reference)), float(np.dot(candidate, reference))
    reference_sum, candidate_sum = float(reference.sum()), float(candidate.sum())
    norm = math.sqrt(reference_squares) or 1.0
    before = _residual(reference, candidate, 1.0, 0.0) / norm            # every residual relative to ||reference||
    scale = cross / norm**2
    scalar = _residual(reference, candidate, scale, 0.0) / norm
    determinant = count * reference_squares - reference_sum**2
    if determinant > 1e-12 * count * reference_squares:
        slope = (count * cross - reference_sum * candidate_sum) / determinant
        intercept = (candidate_sum - slope * reference_sum) / count
    else:  # a constant reference: the fit is its mean
        slope, intercept = 0.0, candidate_sum / count
    affine = _residual(reference, candidate, slope, intercept) / norm
    return (f"best scalar fit candidate = {scale:.4g} x reference leaves rel_l2 {scalar:.3g} of {before:.3g}; "
            f"best affine fit {slope:.4g} x reference {intercept:+.3g} leaves {affine:.3g}")


_CHUNK = 1 << 20


def _residual(reference: np.ndarray, candidate: np.ndarray, slope: float, intercept: float) -> float:
    """||candidate - slope * reference - intercept||, in chunks (flat float64 arrays)."""
    squares = 0.0
    for start in range(0, reference.size, _CHUNK):
        residual = candidate[start:start + _CHUNK] - slope * reference[start:start + _CHUNK] - intercept
        squares += float(np.dot(residual, residual))
    return math.sqrt(squares)


def _along(error: np.ndarray, rows: np.ndarray, carrying: np.ndarray) -> tuple[float, float]:
    """(sum of error * rows, ||rows||) over the carrying rows, widened to float64 a block of rows at a time."""
    product = squares = 0.0
    indices = np.flatnonzero(carrying)
    step = max(1, _CHUNK // max(rows.shape[1], 1))
    for start in range(0, len(indices), step):
        block = rows[indices[start:start + step]].astype(np.float64)     # (rows in the block, rest)
        product += float(np.sum(error[start:start + step] * block))
        squares += float(np.sum(block * block))
    return product, math.sqrt(squares)


def _correlated(error: np.ndarray, name: str, context: Context) -> str:
    """The reference's checkpoints of the same shape that the error points along (|cosine| over the
    token positions that carry the error, so that an error at one position is not diluted)."""
    checkpoint = parse(name)
    axis = checkpoint.token_axis if checkpoint is not None and error.ndim > 1 else 0
    energy = _row_squares(_rows(error, axis))
    carrying = energy >= 0.01 * energy.max(initial=0.0)
    error = _rows(error, axis) if carrying.all() else _rows(error, axis)[carrying]   # a view when every row carries
    norm = float(np.linalg.norm(error))
    if norm == 0:
        return ""
    found = []
    for other in in_flow_order(context.reference.names):
        if other == name or parse(other) is None or context.reference[other].shape != context.reference[name].shape:
            continue
        product, other_norm = _along(error, _rows(context.reference[other], axis), carrying)
        if other_norm:
            found.append((abs(product) / (norm * other_norm), other))
    found = sorted((pair for pair in found if pair[0] >= CORRELATED), reverse=True)[:TOP]
    if not found:
        return "the error is not aligned with any other checkpoint of the reference"
    return "the error points along " + ", ".join(f"{other} (|cosine| {cosine:.2f})" for cosine, other in found)
