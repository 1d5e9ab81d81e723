"""Checkpoints measured as a model makes them, a block of rows at a time, and never stored.

At long context a layer's attention probabilities are H x T x T (2.4 GB in float32 for
SmolLM2 at T=8,192, 72 GB over its 30 layers): more than a check can hold or spill. The
reference then keeps what rebuilds its rows instead of the rows (capture/hf/recipes.py),
and each block of rows the other side makes is measured against the reference's same
rows as it arrives, into the PairSums a comparison of the stored pair would fill
(core/metrics.add_rows), and let go. What remains is the summary: the metrics, the error
per position, the verdict.

    streamed = StreamedCheckpoints(reference_rows, tolerance_of)
    streamed.put("layers.3.attn_probs", block, start)   # (H, rows, S): rows start.. of (H, T, S)
    results = streamed.results()                        # name -> (CheckpointResult, per-position rel_l2)

A measurement needs its tolerance before the rows go (a made-from-RMS rule would need a
second pass), so a check streams only with a calibrated or a fixed tolerance.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Protocol

import numpy as np

from parity.core.metrics import add_rows
from parity.core.names import token_axis
from parity.core.pair_sums import PairSums
from parity.core.results import FAIL, NOT_COMPARABLE, PASS, CheckpointResult, NoiseFloor, Tolerance, one_line


NO_TOLERANCE = ("no tolerance was known before its rows were measured and let go (the calibration gave no noise "
                "floor here)")


class ReferenceRows(Protocol):
    """The reference's side of streamed checkpoints: which, their shapes, and any block of their rows."""

    names: frozenset[str]

    def shape(self, name: str) -> tuple[int, ...]: ...

    def rows(self, name: str, start: int, stop: int) -> np.ndarray: ...   # rows [start, stop) on the token axis

    def rows_per_block(self, name: str) -> int: ...                       # how many to rebuild at once


class StreamedCheckpoints:
    """The measurements of one side's checkpoints against the reference's rows, block by block."""

    def __init__(self, reference: ReferenceRows, tolerance_of: Callable[[str], Tolerance | None]) -> None:
        self.reference = reference
        self.tolerance_of = tolerance_of
        self._sums: dict[str, PairSums] = {}
        self._tolerances: dict[str, Tolerance] = {}
        self._rows: dict[str, np.ndarray] = {}      # name -> (T,) bool: the rows measured
        self._refused: dict[str, tuple[str, tuple[int, ...], str]] = {}   # name -> (status, candidate's shape, why)
        self._whole: dict[str, np.ndarray] = {}    # name -> a whole tensor in another layout, compared as stored

    def __repr__(self) -> str:
        return f"<StreamedCheckpoints {len(self._sums)} of {len(self.reference.names)} measured>"

    def wants(self, name: str) -> bool:
        return name in self.reference.names

    @property
    def received(self) -> frozenset[str]:
        return frozenset(self._sums) | frozenset(self._refused) | frozenset(self._whole)

    def put(self, name: str, block: np.ndarray, start: int = 0) -> None:
        """Measure rows start.. of `name` (its whole shape but on the token axis) against the reference's."""
        if name in self._refused:
            return
        shape = self.reference.shape(name)
        axis = token_axis(name)
        block = _without_leading_ones(np.asarray(block), len(shape))
        rows = block.shape[axis] if block.ndim == len(shape) else 0
        expected = shape[:axis] + (rows,) + shape[axis + 1:]
        if block.shape != expected or start + rows > shape[axis]:
            if not start and block.size == math.prod(shape):   # the whole tensor in another layout
                self._whole[name] = block
                return
            self._refused[name] = (FAIL, tuple(block.shape), f"shape mismatch: reference {list(shape)}, candidate "
                                                             f"{list(block.shape)} as its rows from {start}")
            return
        tolerance = self._tolerances[name] if name in self._tolerances else self.tolerance_of(name)
        if tolerance is None:
            self._refused[name] = (NOT_COMPARABLE, shape, NO_TOLERANCE)
            return
        if name in self._rows and self._rows[name][start:start + rows].any():
            self.forget(name)          # rows measured before: the pass began again (a forward run twice)
        if name not in self._sums:
            self._sums[name] = PairSums(shape, axis)
            self._tolerances[name] = tolerance
            self._rows[name] = np.zeros(shape[axis], dtype=bool)
        step = max(1, self.reference.rows_per_block(name))
        index = [slice(None)] * block.ndim
        for offset in range(0, rows, step):
            stop = min(rows, offset + step)
            index[axis] = slice(offset, stop)
            reference = self.reference.rows(name, start + offset, start + stop)
            add_rows(self._sums[name], reference, block[tuple(index)], start + offset, self._tolerances[name])
            del reference
        self._rows[name][start:start + rows] = True

    def forget(self, name: str) -> None:
        """Drop what was measured of `name` (it is held whole after all, and compared as stored)."""
        for measured in (self._sums, self._tolerances, self._rows, self._refused, self._whole):
            measured.pop(name, None)

    def results(self) -> dict[str, tuple[CheckpointResult, np.ndarray | None]]:
        """Each checkpoint received, as compare.compare_checkpoint gives it: (result, rel_l2 per position)."""
        results = {name: (CheckpointResult(name, status, shape_reference=self.reference.shape(name),
                                           shape_candidate=shape, reason=reason), None)
                   for name, (status, shape, reason) in self._refused.items()}
        for name, sums in self._sums.items():
            results[name] = self._result(name, sums)
        for name, candidate in self._whole.items():
            results[name] = self._aligned(name, candidate)
        return results

    def _aligned(self, name: str, candidate: np.ndarray) -> tuple[CheckpointResult, np.ndarray | None]:
        """A whole tensor given in another layout than the reference's ([T, H, S], a batch axis): compared as a
        stored pair is, in its best alignment (compare.compare_checkpoint), against the reference rebuilt whole
        (a module that made it whole holds as much)."""
        from parity.core.compare import CompareConfig, compare_checkpoint
        from parity.core.trace import Trace

        tolerance = self.tolerance_of(name)
        if tolerance is None:
            return CheckpointResult(name, NOT_COMPARABLE, shape_reference=self.reference.shape(name),
                                    shape_candidate=tuple(candidate.shape), reason=NO_TOLERANCE), None
        axis = token_axis(name)
        reference = self.reference.rows(name, 0, self.reference.shape(name)[axis])
        return compare_checkpoint(name, Trace({name: reference}), Trace({name: candidate}),
                                  CompareConfig(tolerance=tolerance))

    def missing(self) -> frozenset[str]:
        """The reference's streamed checkpoints this side never gave."""
        return self.reference.names - self.received

    def noise_floors(self) -> dict[str, NoiseFloor]:
        """calibrate.noise_floor of each measured checkpoint (this side a run at the candidate's precision);
        the channel-weighted bound is for (T, D) checkpoints, which are not streamed."""
        floors = {}
        for name, (result, _) in self.results().items():
            if result.metrics is not None and result.status != NOT_COMPARABLE:
                floors[name] = NoiseFloor(result.metrics.rel_l2, result.metrics.position_rel_l2,
                                          position_weighted_rel_l2=result.metrics.position_weighted_rel_l2)
        return floors

    def _result(self, name: str, sums: PairSums) -> tuple[CheckpointResult, np.ndarray | None]:
        shape, tolerance = self.reference.shape(name), self._tolerances[name]
        covered = self._rows[name]
        if not covered.all():
            first = int(np.argmin(covered))
            return CheckpointResult(name, NOT_COMPARABLE, shape_reference=shape, shape_candidate=shape,
                                    reason=f"the rows were given in part: {int(covered.sum())} of {covered.size}, "
                                           f"the first missing at position {first}"), None
        per_position = sums.per_position()
        metrics = sums.metrics(per_position)
        status = PASS if tolerance.admits(metrics) else FAIL
        reason = one_line(tolerance.explain(metrics)) if status == FAIL else None
        return CheckpointResult(name, status, metrics=metrics, tolerance=tolerance, reason=reason,
                                shape_reference=shape, shape_candidate=shape), per_position


def _without_leading_ones(block: np.ndarray, ndim: int) -> np.ndarray:
    """(1, H, rows, S) as (H, rows, S): a batch of one, as the trace stores it."""
    while block.ndim > ndim and block.shape[0] == 1:
        block = block[0]
    return block
