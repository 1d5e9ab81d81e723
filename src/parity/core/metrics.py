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
from collections.abc import Iterator

import numpy as np

from parity.core.pair_sums import Chunk, Measurement, PairSums, ToleranceRule, count_mismatched, norm_ratio
from parity.core.results import Metrics, Tolerance
from parity.core.trace.pages import PagesBehind

# 256K elements: the buffers of one chunk (1 MiB each in float32) stay in cache and are allocated once per thread.
CHUNK_ELEMENTS = 1 << 18


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
        for chunk in _passing(reference, candidate):
            if not sums.add(*workspace.load(chunk, reference, candidate), known):
                sums.add(*precise.load(chunk, reference, candidate), known)
        if known is None:
            known = tolerance(sums.reference_rms())
            if sums.max_abs > known.atol:
                sums.mismatched = sum(_mismatched_in(*precise.load(chunk, reference, candidate), known)
                                      for chunk in _passing(reference, candidate))
        per_position = sums.per_position()
        return Measurement(sums.metrics(per_position), known, per_position)


def add_rows(sums: PairSums, reference: np.ndarray, candidate: np.ndarray, start: int,
             tolerance: Tolerance) -> None:
    """Add the rows [start, start + rows) along `sums.token_axis` of a pair, a block of a pass that measure_pair
    would make over the whole (core/streamed.py): the same chunks, the same sums, under a tolerance known before
    the pass (a made-from-RMS rule would need a second pass over rows that are gone)."""
    if reference.shape != candidate.shape:
        raise ValueError(f"shapes differ: {reference.shape} vs {candidate.shape}")
    _check_numeric(reference)
    _check_numeric(candidate)
    workspace, precise = _workspace(_compute_dtype(reference, candidate)), _workspace(np.float64)
    axis = sums.token_axis or 0
    with np.errstate(all="ignore"):
        for local in (chunk for prefix in np.ndindex(*reference.shape[:axis])       # each chunk within one row
                      for chunk in _chunks(reference.shape, prefix)):              # run: its positions are known
            chunk = _moved(local, sums.token_axis, start)
            if not sums.add(chunk, *workspace.load(local, reference, candidate)[1:], tolerance):
                sums.add(chunk, *precise.load(local, reference, candidate)[1:], tolerance)


def _moved(chunk: Chunk, token_axis: int | None, start: int) -> Chunk:
    """A chunk of a block of rows as the chunk of the whole tensor, the block beginning at row `start`."""
    axis = len(chunk.prefix)
    if token_axis is None or token_axis > axis or not start:
        return chunk
    if token_axis == axis:
        return Chunk(chunk.prefix, chunk.start + start, chunk.stop + start, chunk.shape)
    prefix = list(chunk.prefix)
    prefix[token_axis] += start
    return Chunk(tuple(prefix), chunk.start, chunk.stop, chunk.shape)


def per_position_rel_l2(reference: np.ndarray, candidate: np.ndarray, token_axis: int = 0) -> np.ndarray:
    """rel_l2 of each token position (over the finite elements of both): (T,)."""
    if reference.ndim == 0 or reference.size == 0:
        return np.zeros(0)
    return measure_pair(reference, candidate, NORMS_ONLY, token_axis=token_axis).per_position


def channel_weighted_position_rel_l2(reference, candidate, token_axis: int | None) -> float | None:
    """The largest rel_l2 of any token position of a (T, D) pair, with each channel divided by the reference's
    RMS in it over the positions; None for other shapes.

    Where one channel's scale dwarfs the others (a norm weight of thousands), a row's norm is that channel,
    and at a position where the reference's value there passes near zero, the row's rel_l2 is the ratio of
    one element's rounding to almost nothing: a single rounding, whose ratio between two runs is unbounded.
    Weighted, every channel counts as one, and a wrong row is still a wrong row."""
    if token_axis != 0 or len(reference.shape) != 2 or reference.shape != candidate.shape or reference.shape[0] < 2:
        return None
    if _is_torch(reference) or _is_torch(candidate):
        import torch

        reference_rows, candidate_rows = reference.to(torch.float64), candidate.to(torch.float64)
        scale = reference_rows.square().mean(0).sqrt()                                    # (D,)
        scale = torch.where(scale > 0, scale, torch.ones_like(scale))
        error = ((candidate_rows - reference_rows) / scale).square().sum(1).sqrt()       # (T,)
        size = (reference_rows / scale).square().sum(1).sqrt()
        return float((error / size).max())
    positions, width = reference.shape
    step = max(1, CHUNK_ELEMENTS // max(width, 1))         # rows per chunk: no temporary of the pair's size
    chunks = [slice(start, start + step) for start in range(0, positions, step)]
    squares = np.zeros(width)
    with np.errstate(all="ignore"):
        behind = PagesBehind(reference)
        for rows in chunks:
            squares += np.square(np.asarray(reference[rows], dtype=np.float64)).sum(0)
            behind.passed(min(rows.stop, positions) * width)
        behind = PagesBehind(reference, candidate)
        scale = np.sqrt(squares / positions)                                              # (D,)
        scale[~(scale > 0)] = 1.0
        worst = 0.0
        for rows in chunks:
            reference_rows = np.asarray(reference[rows], dtype=np.float64) / scale       # (rows, D)
            error = np.asarray(candidate[rows], dtype=np.float64) / scale - reference_rows
            error_norm = np.sqrt(np.square(error).sum(1))
            ratio = np.where(error_norm == 0, 0.0, error_norm / np.sqrt(np.square(reference_rows).sum(1)))
            if not np.all(np.isfinite(ratio)):
                return float("nan")
            worst = max(worst, float(ratio.max()))
            behind.passed(min(rows.stop, positions) * width)
    return worst


def rel_l2(reference: np.ndarray, candidate: np.ndarray) -> float:
    """||candidate - reference|| / ||reference||, in float64; NaN or inf when either holds a non-finite value
    (detectors test hypotheses with it, and a hypothesis that makes NaN must not look close). Summed in
    chunks: no temporary the size of the pair."""
    reference, candidate = np.asarray(reference).reshape(-1), np.asarray(candidate).reshape(-1)
    error_squares = reference_squares = 0.0
    behind = PagesBehind(reference, candidate)
    with np.errstate(over="ignore", invalid="ignore"):
        for start in range(0, reference.size, CHUNK_ELEMENTS):
            reference_chunk = reference[start:start + CHUNK_ELEMENTS].astype(np.float64)
            error = candidate[start:start + CHUNK_ELEMENTS].astype(np.float64) - reference_chunk
            error_squares += float(np.dot(error, error))
            reference_squares += float(np.dot(reference_chunk, reference_chunk))
            behind.passed(min(start + CHUNK_ELEMENTS, reference.size))
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


def _passing(reference: np.ndarray, candidate: np.ndarray) -> Iterator[Chunk]:
    """The pair's chunks in memory order, each side's pages handed back behind the pass where it is a view of a
    trace file's map (core/trace/pages.py): a pass over any tensor holds a few chunks of it."""
    behind = PagesBehind(reference, candidate)
    done = 0
    for chunk in _chunks(reference.shape):
        yield chunk
        done += math.prod(chunk.shape)
        behind.passed(done)


def _chunks(shape: tuple[int, ...], prefix: tuple[int, ...] = ()) -> Iterator[Chunk]:
    """Chunks of at most CHUNK_ELEMENTS elements covering a tensor of `shape`, in memory order."""
    if not shape:
        yield Chunk((), 0, 1, (1,))
        return
    rest = shape[len(prefix):]
    row = math.prod(rest[1:])
    if row <= CHUNK_ELEMENTS or len(rest) == 1:
        step = max(1, CHUNK_ELEMENTS // max(row, 1))
        for start in range(0, rest[0], step):
            stop = min(start + step, rest[0])
            yield Chunk(prefix, start, stop, (stop - start, *rest[1:]))
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

    def load(self, chunk: Chunk, reference: np.ndarray, candidate: np.ndarray):
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
    return count_mismatched(error, scratch, tolerance)


