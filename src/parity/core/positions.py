"""Where in a tensor the error sits: per token position, per attention head, per layer and position."""

from __future__ import annotations


import numpy as np

from parity.core.config_shape import config_shape
from parity.core.metrics import per_position_rel_l2, rel_l2
from parity.core.names import HEAD_KINDS, parse
from parity.core.trace import Trace, layer_count

MATRIX_KIND = "out"  # the layer x position matrix is of block outputs
WORST_ELEMENTS = 5   # the largest differences listed at the first divergence


def per_head_rel_l2(name: str, reference: Trace, candidate: Trace) -> tuple[float, ...]:
    """rel_l2 of each head, for attention checkpoints whose head count is known."""
    checkpoint = parse(name)
    if checkpoint is None or name not in candidate or reference.shape_of(name) != candidate.shape_of(name):
        return ()
    if not reference.shape_of(name):
        return ()  # a scalar has no heads
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
    """The `count` largest |candidate - reference| at a checkpoint, largest first (ties by position), with both
    values. A NaN or infinity facing anything but itself counts as an infinite difference.

    Read in chunks, each widened to float64 alone: memory stays a few chunks whatever the tensor's size."""
    shape = reference.shape_of(name)
    if name not in candidate or shape != candidate.shape_of(name) or 0 in shape:  # from the headers: nothing read
        return ()
    reference_flat, candidate_flat = (np.asarray(trace[name]).reshape(-1) for trace in (reference, candidate))
    kept_index, kept_difference = np.zeros(0, np.int64), np.zeros(0)
    for start in range(0, reference_flat.size, _CHUNK_ELEMENTS):
        reference_chunk = reference_flat[start:start + _CHUNK_ELEMENTS].astype(np.float64)
        candidate_chunk = candidate_flat[start:start + _CHUNK_ELEMENTS].astype(np.float64)
        difference = _differences(reference_chunk, candidate_chunk)
        top = min(count, difference.size)
        local = np.argpartition(difference, difference.size - top)[difference.size - top:]
        kept_index = np.concatenate([kept_index, local + start])
        kept_difference = np.concatenate([kept_difference, difference[local]])
        order = np.lexsort((kept_index, -kept_difference))[:count]   # largest first, then the earlier position
        kept_index, kept_difference = kept_index[order], kept_difference[order]
    return tuple((tuple(int(i) for i in np.unravel_index(int(k), shape)), float(reference_flat[k]),
                  float(candidate_flat[k]), float(difference)) for k, difference in zip(kept_index, kept_difference))


_CHUNK_ELEMENTS = 1 << 20


def _differences(reference: np.ndarray, candidate: np.ndarray) -> np.ndarray:
    """|c - r| (float64), 0 where they are equal or both NaN, inf where either is non-finite otherwise."""
    with np.errstate(invalid="ignore", over="ignore"):
        difference = np.abs(candidate - reference)
    same = (reference == candidate) | (np.isnan(reference) & np.isnan(candidate))
    return np.where(same, 0.0, np.where(np.isfinite(difference), difference, np.inf))


def _heads(name: str, checkpoint, reference: Trace) -> int | None:
    """Query heads from attn_probs [H, T, S], else from the model's config in the trace's metadata (the
    probabilities left out, or streamed); KV heads from the widths of k and q."""
    probs = f"layers.{checkpoint.layer}.attn_probs"
    probs_shape = reference.shape_of(probs) if probs in reference else ()
    heads = probs_shape[0] if probs_shape else _config_heads(reference.metadata)
    if not heads:
        return None
    if checkpoint.kind in ("k", "v", "k_norm", "v_norm", "k_rope"):
        query = f"layers.{checkpoint.layer}.q"
        if query not in reference or not reference.shape_of(query):
            return None
        head_dim = reference.shape_of(query)[-1] // heads
        return reference.shape_of(name)[-1] // head_dim if head_dim else None
    return heads


def _config_heads(metadata) -> int:
    """The query heads of the model's config recorded in the metadata (0 when it declares none)."""
    config = metadata.get("config") if isinstance(metadata, dict) else None
    return config_shape(config if isinstance(config, dict) else None).heads or 0


def position_profile(name: str, reference: Trace, candidate: Trace) -> tuple[float, ...]:
    checkpoint = parse(name)
    if checkpoint is None or name not in candidate or reference.shape_of(name) != candidate.shape_of(name):
        return ()
    return tuple(float(v) for v in per_position_rel_l2(reference[name], candidate[name], checkpoint.token_axis))


def layer_position_matrix(reference: Trace, candidate: Trace) -> tuple[tuple[float, ...], ...]:
    """rel_l2 of each block output per token position: (layers, T); empty rows where a layer is absent."""
    return tuple(position_profile(f"layers.{i}.{MATRIX_KIND}", reference, candidate)
                 if f"layers.{i}.{MATRIX_KIND}" in reference else ()
                 for i in range(layer_count(reference)))
