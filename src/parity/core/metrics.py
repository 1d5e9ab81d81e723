"""Pure metric maths: one fused, chunked float64 pass over a reference/candidate pair.

The pair is read in chunks small enough to stay in the CPU's cache (memory-mapped
traces are paged in one chunk at a time). Each chunk is widened to float64 once,
into buffers allocated once per pass, and every metric, the per-position error
norms and the reference's RMS accumulate from it. Peak memory is a few chunks,
whatever the tensor's size.

Non-finite values: a NaN facing a NaN, or an infinity facing the same infinity,
counts as agreement; any other non-finite element is a mismatch of infinite size.
The norm-based metrics (rel_l2, cosine) use only the elements finite on both sides.
A chunk whose sums of squares are finite holds no non-finite element, so the
elementwise bookkeeping for them runs only on the chunks that need it.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np

from parity.core.results import Metrics, Tolerance

# 256K elements: the buffers of one chunk (1 MiB each in float32) stay in cache and are allocated once per thread.
CHUNK_ELEMENTS = 1 << 18

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


def measure(reference: np.ndarray, candidate: np.ndarray, tolerance: ToleranceRule, *,
            token_axis: int | None = 0) -> Metrics:
    """Metrics of `candidate` against `reference` (same shape) under `tolerance`."""
    return measure_pair(reference, candidate, tolerance, token_axis=token_axis).metrics


def measure_pair(reference: np.ndarray, candidate: np.ndarray, tolerance: ToleranceRule, *,
                 token_axis: int | None = 0) -> Measurement:
    """One pass over the pair: metrics, the tolerance applied, and the per-position rel_l2.

    A tolerance made from the reference's RMS is known only after the pass; the
    elements outside it are then counted in a second pass, only when the largest
    error exceeds its atol (otherwise none can be outside)."""
    if _is_torch(reference) or _is_torch(candidate):   # tensors where a model ran: measured there
        from parity.core.torch_metrics import measure_tensors

        return measure_tensors(reference, candidate, tolerance, token_axis=token_axis)
    if reference.shape != candidate.shape:
        raise ValueError(f"shapes differ: {reference.shape} vs {candidate.shape}")
    _check_numeric(reference)
    _check_numeric(candidate)
    token_axis = token_axis if token_axis is not None and 0 <= token_axis < reference.ndim else None
    known = tolerance if isinstance(tolerance, Tolerance) else None
    sums = PairSums(reference.shape, token_axis)
    workspace, precise = _workspace(_compute_dtype(reference, candidate)), _workspace(np.float64)
    with np.errstate(all="ignore"):  # non-finite values are counted, not warned about
        for chunk in _chunks(reference.shape):
            if not sums.add(*workspace.load(chunk, reference, candidate), known):
                sums.add(*precise.load(chunk, reference, candidate), known)
        if known is None:
            known = tolerance(sums.reference_rms())
            if sums.max_abs > known.atol:
                sums.mismatched = sum(_mismatched_in(*precise.load(chunk, reference, candidate), known)
                                      for chunk in _chunks(reference.shape))
        per_position = sums.per_position()
        return Measurement(sums.metrics(per_position), known, per_position)


def per_position_rel_l2(reference: np.ndarray, candidate: np.ndarray, token_axis: int = 0) -> np.ndarray:
    """rel_l2 of each token position (over the finite elements of both): (T,)."""
    if reference.ndim == 0 or reference.size == 0:
        return np.zeros(0)
    return measure_pair(reference, candidate, NORMS_ONLY, token_axis=token_axis).per_position


def rel_l2(reference: np.ndarray, candidate: np.ndarray) -> float:
    """||candidate - reference|| / ||reference||, in float64; NaN or inf when either holds a non-finite value
    (detectors test hypotheses with it, and a hypothesis that makes NaN must not look close). Summed in
    chunks: no temporary the size of the pair."""
    reference, candidate = np.asarray(reference).reshape(-1), np.asarray(candidate).reshape(-1)
    error_squares = reference_squares = 0.0
    with np.errstate(over="ignore", invalid="ignore"):
        for start in range(0, reference.size, CHUNK_ELEMENTS):
            reference_chunk = reference[start:start + CHUNK_ELEMENTS].astype(np.float64)
            error = candidate[start:start + CHUNK_ELEMENTS].astype(np.float64) - reference_chunk
            error_squares += float(np.dot(error, error))
            reference_squares += float(np.dot(reference_chunk, reference_chunk))
    return norm_ratio(math.sqrt(error_squares), math.sqrt(reference_squares))


def rms(array: np.ndarray) -> float:
    """Root mean square over finite elements; 0.0 for an empty or all-non-finite tensor."""
    array = np.asarray(array)
    return measure_pair(array, array, NORMS_ONLY, token_axis=None).metrics.reference_rms


NORMS_ONLY = Tolerance(atol=float("inf"), rtol=0.0, basis="none: only the norms are read")  # no element fails


def _is_torch(value) -> bool:
    return type(value).__module__.startswith("torch")


def _compute_dtype(reference: np.ndarray, candidate: np.ndarray) -> type:
    """float32 where both sides are float32 or narrower (the chunk's sums still accumulate in
    float64, and a chunk float32 would not hold exactly is redone in float64); float64 otherwise."""
    narrow = (reference.dtype.kind == "f" and reference.dtype.itemsize <= 4
              and candidate.dtype.kind == "f" and candidate.dtype.itemsize <= 4)
    return np.float32 if narrow else np.float64


def _check_numeric(array: np.ndarray) -> None:
    if array.dtype.kind not in "fiub":
        raise TypeError(f"cannot measure a tensor of dtype {array.dtype}: only real numeric tensors are compared")


# --- chunks -------------------------------------------------------------------------


class _Chunk(NamedTuple):
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


def _chunks(shape: tuple[int, ...], prefix: tuple[int, ...] = ()) -> Iterator[_Chunk]:
    """Chunks of at most CHUNK_ELEMENTS elements covering a tensor of `shape`, in memory order."""
    if not shape:
        yield _Chunk((), 0, 1, (1,))
        return
    rest = shape[len(prefix):]
    row = math.prod(rest[1:])
    if row <= CHUNK_ELEMENTS or len(rest) == 1:
        step = max(1, CHUNK_ELEMENTS // max(row, 1))
        for start in range(0, rest[0], step):
            stop = min(start + step, rest[0])
            yield _Chunk(prefix, start, stop, (stop - start, *rest[1:]))
        return
    for index in range(rest[0]):
        yield from _chunks(shape, (*prefix, index))


_WORKSPACES = threading.local()


def _workspace(dtype: type) -> "_Workspace":
    """This thread's buffers of `dtype` (float32 or float64), made on first use and kept: a pass
    allocates nothing per chunk, and threads measuring at once (the pytest plugin's, a user's) never share one."""
    name = "float32" if dtype is np.float32 else "float64"
    cached = getattr(_WORKSPACES, name, None)
    if cached is None:
        cached = _Workspace(dtype)
        setattr(_WORKSPACES, name, cached)
    return cached


class _Workspace:
    """Buffers of one compute dtype, reused for every chunk of a pass (fresh ones would page-fault)."""

    def __init__(self, dtype: type) -> None:
        self.dtype = np.dtype(dtype)
        self.buffers = [np.empty(CHUNK_ELEMENTS, dtype) for _ in range(4)] + [np.empty(CHUNK_ELEMENTS, bool)]

    def load(self, chunk: _Chunk, reference: np.ndarray, candidate: np.ndarray):
        """(chunk, reference, candidate, error, scratch, mask) in the compute dtype, shaped as the chunk;
        a side already in that dtype is used where it lies, without a copy."""
        size, shape = math.prod(chunk.shape), chunk.shape
        reference_buffer, candidate_buffer, error, scratch, mask = (buffer[:size].reshape(shape)
                                                                    for buffer in self.buffers)
        return (chunk, self._side(chunk.of(reference).reshape(shape), reference_buffer),
                self._side(chunk.of(candidate).reshape(shape), candidate_buffer), error, scratch, mask)

    def _side(self, values: np.ndarray, buffer: np.ndarray) -> np.ndarray:
        if values.dtype == self.dtype:
            return values
        np.copyto(buffer, values, casting="unsafe")
        return buffer


# --- the pass -----------------------------------------------------------------------


class PairSums:
    """What a pass accumulates: float64 scalars, and float64 sums of squares per position. (The torch
    pass in core/torch_metrics.py fills one too, so both end in the same metrics.)"""

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

    def add(self, chunk: _Chunk, reference, candidate, error, scratch, mask, tolerance: Tolerance | None) -> bool:
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
            self.mismatched += _mismatched(abs_error, scratch, tolerance)
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

    def _position_squares(self, chunk: _Chunk, values: np.ndarray, scratch: np.ndarray) -> np.ndarray:
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

    def _add_positions(self, chunk: _Chunk, position_error: np.ndarray, position_reference: np.ndarray) -> None:
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


_ONES = {np.dtype(np.float32): np.ones(CHUNK_ELEMENTS, np.float32), np.dtype(np.float64): np.ones(CHUNK_ELEMENTS)}


_add = np.add.reduce   # ndarray.sum without its Python wrapper: called a few times per chunk


def _ones(length: int, dtype: np.dtype) -> np.ndarray:
    return _ONES[dtype][:length]


def _total(values: np.ndarray) -> float:
    """Sum of a chunk, as row sums by BLAS (3x numpy's pairwise sum) added in float64."""
    rows = values.reshape(values.shape[0] if values.ndim > 1 else 1, -1)
    return float(_add(rows @ _ones(rows.shape[1], rows.dtype), dtype=np.float64))


def _dot(left: np.ndarray, right: np.ndarray) -> float:
    """Sum of products (BLAS's dot: one pass, no temporary)."""
    return float(np.dot(left.reshape(-1), right.reshape(-1)))


def _mismatched(abs_error: np.ndarray, abs_reference: np.ndarray, tolerance: Tolerance) -> int:
    if tolerance.rtol == 0.0:
        return int(np.count_nonzero(abs_error > tolerance.atol))
    bound = abs_reference * tolerance.rtol
    bound += tolerance.atol
    return int(np.count_nonzero(abs_error > bound))


def _mismatched_in(chunk, reference, candidate, error, scratch, mask, tolerance: Tolerance) -> int:
    """The second pass's count for one chunk (non-finite disagreements count as mismatches)."""
    with np.errstate(invalid="ignore", over="ignore"):
        np.subtract(candidate, reference, out=error)
    np.abs(error, out=error)
    finite = np.isfinite(reference) & np.isfinite(candidate)
    if not finite.all():
        agreeing = (np.isnan(reference) & np.isnan(candidate)) | (np.isinf(reference) & (reference == candidate))
        error[:] = np.where(finite, error, np.where(agreeing, 0.0, np.inf))
        reference = np.where(finite, reference, 0.0)
    np.abs(reference, out=scratch)
    return _mismatched(error, scratch, tolerance)


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
