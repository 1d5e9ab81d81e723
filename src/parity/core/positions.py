"""Where in a tensor the error sits: per token position, per attention head, per layer and position."""

from __future__ import annotations


import numpy as np

from parity.core.metrics import per_position_rel_l2, rel_l2
from parity.core.names import HEAD_KINDS, parse
from parity.core.trace import Trace, layer_count

MATRIX_KIND = "out"  # the layer x position matrix is of block outputs
WORST_ELEMENTS = 5   # the largest differences listed at the first divergence


def per_head_rel_l2(name: str, reference: Trace, candidate: Trace) -> tuple[float, ...]:
    """rel_l2 of each head, for attention checkpoints whose head count is known."""
    checkpoint = parse(name)
    if checkpoint is None or name not in candidate or reference[name].shape != candidate[name].shape:
        return ()
    reference_tensor, candidate_tensor = reference[name], candidate[name]
    if checkpoint.kind == "attn_probs":
        return tuple(rel_l2(reference_tensor[h], candidate_tensor[h]) for h in range(reference_tensor.shape[0]))
    heads = _heads(name, checkpoint, reference)
    if checkpoint.kind not in HEAD_KINDS or not heads or reference_tensor.shape[-1] % heads:
        return ()
    width = reference_tensor.shape[-1] // heads
    return tuple(
        rel_l2(reference_tensor[..., h * width:(h + 1) * width], candidate_tensor[..., h * width:(h + 1) * width])
        for h in range(heads)
    )


def largest_differences(name: str, reference: Trace, candidate: Trace,
                        count: int = WORST_ELEMENTS) -> tuple[tuple[tuple[int, ...], float, float, float], ...]:
    """The `count` largest |candidate - reference| at a checkpoint, largest first, with both values.

    A NaN or infinity facing anything but itself counts as an infinite difference."""
    if name not in candidate or reference[name].shape != candidate[name].shape or reference[name].size == 0:
        return ()
    reference_tensor = np.asarray(reference[name], np.float64)
    candidate_tensor = np.asarray(candidate[name], np.float64)
    with np.errstate(invalid="ignore", over="ignore"):
        difference = np.abs(candidate_tensor - reference_tensor).ravel()
    same = (reference_tensor == candidate_tensor) | (np.isnan(reference_tensor) & np.isnan(candidate_tensor))
    difference = np.where(same.ravel(), 0.0, np.where(np.isfinite(difference), difference, np.inf))
    count = min(count, difference.size)
    largest = np.argpartition(difference, difference.size - count)[difference.size - count:]
    largest = largest[np.argsort(-difference[largest], kind="stable")]
    return tuple((tuple(int(i) for i in np.unravel_index(int(k), reference_tensor.shape)),
                  float(reference_tensor.flat[k]), float(candidate_tensor.flat[k]), float(difference[k]))
                 for k in largest)


def _heads(name: str, checkpoint, reference: Trace) -> int | None:
    """Query heads from attn_probs [H, T, S]; KV heads from the widths of k and q."""
    probs = f"layers.{checkpoint.layer}.attn_probs"
    if probs not in reference:
        return None
    heads = reference[probs].shape[0]
    if checkpoint.kind in ("k", "v", "k_norm", "k_rope"):
        query = f"layers.{checkpoint.layer}.q"
        if query not in reference:
            return None
        head_dim = reference[query].shape[-1] // heads
        return reference[name].shape[-1] // head_dim if head_dim else None
    return heads


def position_profile(name: str, reference: Trace, candidate: Trace) -> tuple[float, ...]:
    checkpoint = parse(name)
    if checkpoint is None or name not in candidate or reference[name].shape != candidate[name].shape:
        return ()
    return tuple(float(v) for v in per_position_rel_l2(reference[name], candidate[name], checkpoint.token_axis))


def layer_position_matrix(reference: Trace, candidate: Trace) -> tuple[tuple[float, ...], ...]:
    """rel_l2 of each block output per token position: (layers, T); empty rows where a layer is absent."""
    return tuple(position_profile(f"layers.{i}.{MATRIX_KIND}", reference, candidate)
                 if f"layers.{i}.{MATRIX_KIND}" in reference else ()
                 for i in range(layer_count(reference)))
