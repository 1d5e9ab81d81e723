"""What one pass over a reference/candidate pair accumulates, and the metrics it ends in.

The numpy pass (core/metrics.py) adds chunks of the pair to a PairSums; the torch
pass (core/torch_metrics.py) fills one from the sums it kept on the device. Both
end in `PairSums.metrics`, so the two give the same Metrics under the same rules.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np

from parity.core.results import Metrics, Tolerance

ToleranceRule = Tolerance | Callable[[float], Tolerance]  # fixed, or made from the reference's RMS

# Below this mean square (an RMS of 1e-15) float32 squares lose precision to underflow: redo in float64.
_SMALLEST_SQUARES = 1e-30


@dataclass(frozen=True)
class Measurement:
    """The metrics of one pair, the tolerance they were held to, and the error per token position."""

    metrics: Metrics
    tolerance: Tolerance
    per_position: np.ndarray  # (T,) rel_l2 of each token position

    def __repr__(self) -> str:
        return f"<Measurement {self.metrics!r}>"


class Chunk(NamedTuple):
    """`array[prefix][start:stop]`: a run along axis len(prefix), with every axis after it whole.
    (A named tuple: one is made per chunk, and a frozen dataclass costs several times more to build.)"""

    prefix: tuple[int, ...]
    start: int
    stop: int
    shape: tuple[int, ...]   # the chunk's own shape: (stop - start, *shape[len(prefix) + 1:])

    def of(self, array: np.ndarray) -> np.ndarray:
        return array[self.prefix][self.start:self.stop] if array.ndim else array.reshape(1)

    def index(self, local: tuple[int, ...]) -> tuple[int, ...]:
        """The index in the whole tensor of an element at `local` in the chunk."""
        return (*self.prefix, self.start + local[0], *local[1:])


class PairSums:
    """What a pass accumulates: float64 scalars, and float64 sums of squares per position."""

    def __init__(self, shape: tuple[int, ...], token_axis: int | None) -> None:
        self.shape, self.token_axis = shape, token_axis
        self.numel = 0
        self.error_squares = self.reference_squares_both = self.candidate_squares_both = self.dot = 0.0
        self.abs_sum, self.max_abs, self.max_rel = 0.0, -1.0, 0.0
        self.worst: tuple[int, ...] | None = None
        self.mismatched = 0
        self.nan_reference = self.nan_candidate = self.inf_reference = self.inf_candidate = 0
        self.reference_squares, self.reference_finite = 0.0, 0   # over the reference's finite elements (its RMS)
        positions = shape[token_axis] if token_axis is not None else 0
        self.position_error, self.position_reference = np.zeros(positions), np.zeros(positions)

    def add(self, chunk: Chunk, reference, candidate, error, scratch, mask, tolerance: Tolerance | None) -> bool:
        """Add one chunk; False (nothing added) when float32 cannot hold its sums exactly enough:
        a non-finite or overflowing square, or values so small that their squares underflow."""
        np.subtract(candidate, reference, out=error)
        position_error = self._position_squares(chunk, error, scratch)
        position_reference = self._position_squares(chunk, reference, scratch)
        error_total, reference_total = float(_add(position_error)), float(_add(position_reference))
        finite = math.isfinite(error_total + reference_total)
        if error.dtype != np.float64 and (not finite or reference_total < _SMALLEST_SQUARES * reference.size):
            return False
        if not finite:  # a NaN or an infinity in the chunk
            self._add_with_nonfinite(chunk, reference, candidate, error, scratch, mask, tolerance)
            return True
        cross = _dot(reference, error)  # sum r*(c - r): with the squares, gives sum c^2 and sum r*c
        self.numel += reference.size
        self.error_squares += error_total
        self.reference_squares_both += reference_total
        self.reference_squares += reference_total
        self.reference_finite += reference.size
        self.candidate_squares_both += reference_total + 2.0 * cross + error_total
        self.dot += reference_total + cross
        np.abs(error, out=error)
        self._add_errors(chunk, reference, error, scratch, mask, tolerance)
        self._add_positions(chunk, position_error, position_reference)
        return True

    def _add_with_nonfinite(self, chunk, reference, candidate, error, scratch, mask, tolerance) -> None:
        """The same sums over the elements finite on both sides, with the non-finite ones counted."""
        self.numel += reference.size
        nan_reference, nan_candidate = np.isnan(reference), np.isnan(candidate)
        inf_reference, inf_candidate = np.isinf(reference), np.isinf(candidate)
        self.nan_reference += int(nan_reference.sum())
        self.nan_candidate += int(nan_candidate.sum())
        self.inf_reference += int(inf_reference.sum())
        self.inf_candidate += int(inf_candidate.sum())
        finite_reference = np.isfinite(reference)
        finite = finite_reference & np.isfinite(candidate)
        agreeing = (nan_reference & nan_candidate) | (inf_reference & (reference == candidate))
        reference_values = np.where(finite_reference, reference, 0.0)
        self.reference_squares += _dot(reference_values, reference_values)
        self.reference_finite += int(finite_reference.sum())
        reference_both, candidate_both = np.where(finite, reference, 0.0), np.where(finite, candidate, 0.0)
        np.subtract(candidate_both, reference_both, out=error)
        position_error = self._position_squares(chunk, error, scratch)
        position_reference = self._position_squares(chunk, reference_both, scratch)
        self.error_squares += float(position_error.sum())
        self.reference_squares_both += float(position_reference.sum())
        self.candidate_squares_both += _dot(candidate_both, candidate_both)
        self.dot += _dot(reference_both, candidate_both)
        np.abs(error, out=error)
        error[~finite & ~agreeing] = np.inf
        self._add_errors(chunk, reference_both, error, scratch, mask, tolerance)
        self._add_positions(chunk, position_error, position_reference)

    def _add_errors(self, chunk, reference, abs_error, scratch, mask, tolerance) -> None:
        """max_abs and where, mean_abs, max_rel and the mismatches, from |c - r| (inf where they disagree)."""
        index = int(abs_error.argmax())
        largest = float(abs_error.reshape(-1)[index])
        if largest > self.max_abs:
            self.max_abs = largest
            self.worst = chunk.index(tuple(int(i) for i in np.unravel_index(index, chunk.shape)))
        self.abs_sum += _total(abs_error)
        np.abs(reference, out=scratch)                      # scratch = |r|
        if tolerance is not None and self.max_abs > tolerance.atol:  # else no element can be outside
            self.mismatched += count_mismatched(abs_error, scratch, tolerance)
        np.divide(abs_error, scratch, out=scratch)          # 0/0 is NaN, which fmax skips; x/0 is inf
        largest_rel = float(np.fmax.reduce(scratch, axis=None, initial=0.0))
        if not math.isfinite(largest_rel):  # r == 0 somewhere, or |c - r| is inf: only where both are defined
            np.abs(reference, out=scratch)
            np.greater(scratch, 0.0, out=mask)
            mask &= np.isfinite(abs_error)
            np.divide(abs_error, scratch, out=scratch, where=mask)
            scratch[~mask] = 0.0
            largest_rel = float(scratch.max(initial=0.0))
        self.max_rel = max(self.max_rel, largest_rel)

    def _position_squares(self, chunk: Chunk, values: np.ndarray, scratch: np.ndarray) -> np.ndarray:
        """Sums of squares of the chunk: per row when the chunk runs along the token axis,
        per position when the token axis is inside it, else one total. (`scratch` is overwritten.)
        Every sum is a BLAS matrix-vector product with a vector of ones: one vectorized pass."""
        axis = len(chunk.prefix)
        squares = np.square(values, out=scratch)
        if self.token_axis is not None and self.token_axis > axis:   # (before, T, after) within the chunk
            inner = self.token_axis - axis
            before, positions = math.prod(values.shape[:inner]), values.shape[inner]
            by_before = squares.reshape(before, -1)                           # (before, T * after)
            if before > 1:
                by_before = _ones(before, squares.dtype) @ by_before          # (T * after,)
            rows = by_before.reshape(positions, -1)                          # (T, after)
        else:
            rows = squares.reshape(values.shape[0] if self.token_axis == axis else 1, -1)   # (rows, row length)
        return rows @ _ones(rows.shape[1], rows.dtype)

    def _add_positions(self, chunk: Chunk, position_error: np.ndarray, position_reference: np.ndarray) -> None:
        axis = len(chunk.prefix)
        if self.token_axis is None:
            return
        if self.token_axis < axis:
            where = slice(chunk.prefix[self.token_axis], chunk.prefix[self.token_axis] + 1)
        elif self.token_axis == axis:
            where = slice(chunk.start, chunk.stop)
        else:
            where = slice(None)
        self.position_error[where] += position_error
        self.position_reference[where] += position_reference

    # --- results ---

    def reference_rms(self) -> float:
        return float(np.sqrt(self.reference_squares / self.reference_finite)) if self.reference_finite else 0.0

    def per_position(self) -> np.ndarray:
        return _ratio(np.sqrt(self.position_error), np.sqrt(self.position_reference))

    def metrics(self, per_position: np.ndarray) -> Metrics:
        worst_index = self.worst if self.numel else None
        if worst_index is not None and not self.shape:
            worst_index = ()
        return Metrics(
            numel=self.numel,
            max_abs=max(self.max_abs, 0.0),
            mean_abs=self.abs_sum / self.numel if self.numel else 0.0,
            rel_l2=norm_ratio(math.sqrt(self.error_squares), math.sqrt(self.reference_squares_both)),
            cosine=self._cosine(),
            max_rel=self.max_rel,
            mismatched=self.mismatched,
            nan_reference=self.nan_reference,
            nan_candidate=self.nan_candidate,
            inf_reference=self.inf_reference,
            inf_candidate=self.inf_candidate,
            worst_index=worst_index,
            worst_position=worst_index[self.token_axis] if worst_index and self.token_axis is not None else None,
            position_rel_l2=float(per_position.max(initial=0.0)),
            reference_rms=self.reference_rms(),
            position_weighted_rel_l2=position_weighted(per_position),
        )

    def _cosine(self) -> float:
        # sum c^2 is assembled from sum r^2 + 2 sum r(c - r) + sum (c - r)^2: rounding can leave it just below 0
        reference_norm, candidate_norm = np.sqrt(self.reference_squares_both), np.sqrt(max(self.candidate_squares_both, 0.0))
        if reference_norm == 0.0 and candidate_norm == 0.0:
            return 1.0
        if reference_norm == 0.0 or candidate_norm == 0.0:
            return 0.0
        if self.error_squares == 0.0:
            return 1.0  # equal on every finite element: exactly 1, whatever the summation order
        return min(1.0, max(-1.0, self.dot / (reference_norm * candidate_norm)))  # rounding can step past +-1


_ONES: dict[np.dtype, np.ndarray] = {}


_add = np.add.reduce   # ndarray.sum without its Python wrapper: called a few times per chunk


def _ones(length: int, dtype: np.dtype) -> np.ndarray:
    """A vector of ones (a BLAS row sum's right-hand side), made once per dtype and grown as needed."""
    ones = _ONES.get(dtype)
    if ones is None or ones.size < length:
        ones = _ONES[dtype] = np.ones(max(length, 1 << 18), dtype)
    return ones[:length]


def _total(values: np.ndarray) -> float:
    """Sum of a chunk, as row sums by BLAS (3x numpy's pairwise sum) added in float64."""
    rows = values.reshape(values.shape[0] if values.ndim > 1 else 1, -1)
    return float(_add(rows @ _ones(rows.shape[1], rows.dtype), dtype=np.float64))


def _dot(left: np.ndarray, right: np.ndarray) -> float:
    """Sum of products (BLAS's dot: one pass, no temporary)."""
    return float(np.dot(left.reshape(-1), right.reshape(-1)))


def count_mismatched(abs_error: np.ndarray, abs_reference: np.ndarray, tolerance: Tolerance) -> int:
    """Elements outside atol + rtol * |r|, from |c - r| and |r| (`abs_reference` is overwritten)."""
    if tolerance.rtol == 0.0:
        return int(np.count_nonzero(abs_error > tolerance.atol))
    bound = abs_reference * tolerance.rtol
    bound += tolerance.atol
    return int(np.count_nonzero(abs_error > bound))


def _ratio(error_norm: np.ndarray, reference_norm: np.ndarray) -> np.ndarray:
    """error / reference elementwise (float64), with 0/0 -> 0 and x/0 -> inf."""
    error_norm, reference_norm = np.asarray(error_norm, np.float64), np.asarray(reference_norm, np.float64)
    defined = reference_norm > 0
    ratio = np.divide(error_norm, reference_norm, out=np.zeros(error_norm.shape), where=defined)
    if not defined.all():
        ratio[~defined & (error_norm > 0)] = np.inf
    return ratio


def norm_ratio(error_norm: float, reference_norm: float) -> float:
    """error / reference, with 0/0 -> 0 and x/0 -> inf."""
    if reference_norm > 0:
        return error_norm / reference_norm
    return math.inf if error_norm > 0 else 0.0


def position_weighted(per_position: np.ndarray) -> float | None:
    """rel_l2 with each token position counted once: the root mean square of the positions' rel_l2 (NaN where
    one is NaN); None for a tensor of fewer than two positions, or without a token axis (nothing to weigh)."""
    if per_position.size < 2:
        return None
    return float(np.sqrt(np.mean(np.square(per_position.astype(np.float64)))))
