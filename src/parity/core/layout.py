"""Aligning a candidate tensor stored in another layout with the reference's.

Ports store tensors their own way: heads unflattened (`[T, H, hd]` for `[T, H*hd]`),
attention probabilities as `[T, H, S]`, head-major q as `[H, T, hd]`. When the
shapes differ, every axis permutation of the candidate, optionally followed by
flattening its trailing axes, that yields the reference's shape is a possible
layout; the comparison keeps the one that agrees best and says which it was.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

_MAX_PERMUTED_AXES = 5  # 120 permutations; traces have at most 4 axes


@dataclass(frozen=True)
class Alignment:
    candidate: np.ndarray            # in the reference's shape
    permutation: tuple[int, ...]     # applied to the candidate's axes first
    flattened: bool                  # trailing axes were then merged
    unit_axes: bool = False          # only axes of size 1 differ (a batch or a one-token axis)

    def __repr__(self) -> str:
        return f"<Alignment {self.describe()}>"

    def describe(self) -> str:
        steps = []
        if self.permutation != tuple(range(len(self.permutation))):
            steps.append(f"axes permuted {self.permutation}")
        if self.flattened:
            steps.append("trailing axes flattened")
        if self.unit_axes:
            steps.append("axes of size 1 dropped")
        return " then ".join(steps) or "as stored"


def alignments(reference_shape: tuple[int, ...], candidate: np.ndarray) -> Iterator[Alignment]:
    """Every distinct way to read `candidate` in `reference_shape`, identity first when it fits."""
    if candidate.shape == reference_shape:
        yield Alignment(candidate, tuple(range(candidate.ndim)), False)
        return
    if _numel(candidate) != int(np.prod(reference_shape, dtype=np.int64)) or candidate.ndim > _MAX_PERMUTED_AXES:
        return
    if _without_unit_axes(candidate.shape) == _without_unit_axes(reference_shape):
        yield Alignment(candidate.reshape(reference_shape), tuple(range(candidate.ndim)), False, unit_axes=True)
        return
    seen: set[tuple[int, ...]] = set()
    for permutation in itertools.permutations(range(candidate.ndim)):
        permuted_shape = tuple(candidate.shape[axis] for axis in permutation)
        flattened = _flattens_to(permuted_shape, reference_shape)
        if permuted_shape != reference_shape and not flattened:
            continue
        key = permutation  # distinct permutations of equal-sized axes read the data differently
        if key in seen:
            continue
        seen.add(key)
        aligned = _permuted(candidate, permutation).reshape(reference_shape)
        yield Alignment(aligned, permutation, flattened and permuted_shape != reference_shape)


def _numel(tensor) -> int:
    """Elements of a numpy array or a torch tensor (whose `size` is a method)."""
    return tensor.numel() if callable(tensor.size) else int(tensor.size)


def _permuted(tensor, permutation: tuple[int, ...]):
    """Axes permuted, as a view: numpy's transpose, or torch's permute for a tensor on its device."""
    return tensor.permute(*permutation) if hasattr(tensor, "permute") else np.transpose(tensor, permutation)


def _without_unit_axes(shape: tuple[int, ...]) -> tuple[int, ...]:
    return tuple(size for size in shape if size != 1)


def _flattens_to(shape: tuple[int, ...], target: tuple[int, ...]) -> bool:
    """True when merging trailing axes of `shape` gives `target` (leading axes kept)."""
    if len(shape) <= len(target) or not target:
        return False
    keep = len(target) - 1
    return shape[:keep] == target[:keep] and int(np.prod(shape[keep:], dtype=np.int64)) == target[-1]


def last_positions(reference_shape: tuple[int, ...], candidate_shape: tuple[int, ...], token_axis: int = 0) -> int:
    """How many of the reference's last token positions the candidate holds, when it holds fewer
    positions and is otherwise of the same shape (nanoGPT's forward returns the last position's
    logits only); 0 when it is not such a truncation."""
    if len(reference_shape) != len(candidate_shape) or len(reference_shape) <= token_axis:
        return 0
    others_equal = all(r == c for axis, (r, c) in enumerate(zip(reference_shape, candidate_shape)) if axis != token_axis)
    kept = candidate_shape[token_axis]
    return kept if others_equal and 0 < kept < reference_shape[token_axis] else 0


def last_rows(tensor: np.ndarray, count: int, token_axis: int = 0) -> np.ndarray:
    """The last `count` token positions of `tensor` (a numpy array, or a torch tensor on its device)."""
    if hasattr(tensor, "narrow"):
        return tensor.narrow(token_axis, tensor.shape[token_axis] - count, count)
    return np.take(tensor, range(tensor.shape[token_axis] - count, tensor.shape[token_axis]), axis=token_axis)
