"""The metric pass over torch tensors, on the device that holds them.

When both models run on one device (`parity check --on-device`), each checkpoint
pair is measured where it lies: nothing is copied to the host but the few numbers
of the result (about twenty scalars and the error per token position). The pass
gives the same metrics as core/metrics.py under the same rules (the module
docstring there): it works in float64, in row chunks that bound the device
memory it takes, and fills the same PairSums, so both end in one place.

Non-finite values: a NaN facing a NaN, or an infinity facing the same infinity,
is agreement; any other non-finite element is a mismatch of infinite size; the
norms use the elements finite on both sides.
"""

from __future__ import annotations

import math

import numpy as np

from parity.core.pair_sums import Measurement, PairSums, ToleranceRule
from parity.core.results import Tolerance

# Elements per chunk: about ten float64 temporaries of this many live at once (320 MiB on a GPU, 80 MiB on a CPU).
CHUNK_ELEMENTS = {"cuda": 1 << 22, "cpu": 1 << 20}


def measure_tensors(reference, candidate, tolerance: ToleranceRule, *, token_axis: int | None = 0) -> Measurement:
    """measure_pair for torch tensors (either may be a numpy array: it is moved to the other's device)."""
    import torch

    reference, candidate = _on_one_device(reference, candidate)
    if reference.shape != candidate.shape:
        raise ValueError(f"shapes differ: {tuple(reference.shape)} vs {tuple(candidate.shape)}")
    for tensor in (reference, candidate):
        if not _real_numeric(tensor):
            raise TypeError(f"cannot measure a tensor of dtype {tensor.dtype}: only real numeric tensors are compared")
    shape = tuple(reference.shape)
    token_axis = token_axis if token_axis is not None and 0 <= token_axis < len(shape) else None
    sums = PairSums(shape, token_axis)
    flat_reference, flat_candidate = (tensor.reshape(1) if not shape else tensor for tensor in (reference, candidate))
    with torch.no_grad():
        partial = _Partial(flat_reference.device, sums.position_error.shape[0])
        for start, stop in _row_chunks(tuple(flat_reference.shape), reference.device.type, reference.numel()):
            partial.add(flat_reference[start:stop], flat_candidate[start:stop], start, token_axis)
        partial.fill(sums, shape)
        known = tolerance if isinstance(tolerance, Tolerance) else tolerance(sums.reference_rms())
        if sums.max_abs > known.atol:  # else no element can be outside
            sums.mismatched = sum(_mismatched(flat_reference[start:stop], flat_candidate[start:stop], known)
                                  for start, stop in _row_chunks(tuple(flat_reference.shape), reference.device.type,
                                                                 reference.numel()))
    per_position = sums.per_position()
    return Measurement(sums.metrics(per_position), known, per_position)


def _real_numeric(tensor) -> bool:
    """Floating point, integer or bool: what the numpy pass measures too (dtype kinds f, i, u, b)."""
    import torch

    return tensor.is_floating_point() or tensor.dtype in (torch.int8, torch.int16, torch.int32, torch.int64,
                                                          torch.uint8, torch.bool)


def _on_one_device(reference, candidate):
    import torch

    if not isinstance(reference, torch.Tensor):
        reference = torch.as_tensor(np.asarray(reference), device=candidate.device)
    if not isinstance(candidate, torch.Tensor):
        candidate = torch.as_tensor(np.asarray(candidate), device=reference.device)
    if reference.device != candidate.device:
        raise ValueError(f"the pair lies on two devices ({reference.device}, {candidate.device}): measure it on one")
    return reference.detach(), candidate.detach()


def _row_chunks(shape: tuple[int, ...], device_type: str, numel: int):
    """[start, stop) runs of the leading axis, each of at most a chunk's elements (one row at least);
    none for an empty tensor."""
    if numel == 0:
        return
    row = math.prod(shape[1:])
    step = max(1, CHUNK_ELEMENTS.get(device_type, CHUNK_ELEMENTS["cuda"]) // max(row, 1))
    for start in range(0, shape[0], step):
        yield start, min(start + step, shape[0])


class _Partial:
    """Sums kept on the device, chunk after chunk, and read back once (one synchronisation per pair)."""

    def __init__(self, device, positions: int) -> None:
        import torch

        self.scalars = torch.zeros(_SCALARS, dtype=torch.float64, device=device)
        self.position_error = torch.zeros(positions, dtype=torch.float64, device=device)
        self.position_reference = torch.zeros(positions, dtype=torch.float64, device=device)
        self.largest: list = []   # per chunk: (max |c - r|, its flat index in the whole tensor)

    def add(self, reference, candidate, start: int, token_axis: int | None) -> None:
        import torch

        reference, candidate = reference.to(torch.float64), candidate.to(torch.float64)
        finite_reference, finite_candidate = torch.isfinite(reference), torch.isfinite(candidate)
        both = finite_reference & finite_candidate
        nan_reference, nan_candidate = torch.isnan(reference), torch.isnan(candidate)
        inf_reference = torch.isinf(reference)
        agreeing = (nan_reference & nan_candidate) | (inf_reference & (reference == candidate))
        reference_both = torch.where(both, reference, 0.0)
        candidate_both = torch.where(both, candidate, 0.0)
        reference_finite = torch.where(finite_reference, reference, 0.0)
        error = candidate_both - reference_both
        error_squares, reference_squares = error * error, reference_both * reference_both
        abs_error = torch.where(both | agreeing, error.abs(), torch.inf)
        abs_reference = reference_both.abs()
        defined = (abs_reference > 0) & torch.isfinite(abs_error)
        relative = torch.where(defined, abs_error / torch.where(defined, abs_reference, 1.0), 0.0)
        self.scalars[:_MAX_REL] += torch.stack([
            torch.tensor(float(reference.numel()), dtype=torch.float64, device=reference.device),
            error_squares.sum(), reference_squares.sum(), (candidate_both * candidate_both).sum(),
            (reference_both * candidate_both).sum(), abs_error.sum(),
            (reference_finite * reference_finite).sum(), finite_reference.sum(dtype=torch.float64),
            nan_reference.sum(dtype=torch.float64), nan_candidate.sum(dtype=torch.float64),
            inf_reference.sum(dtype=torch.float64), torch.isinf(candidate).sum(dtype=torch.float64),
        ])
        self.scalars[_MAX_REL] = torch.maximum(self.scalars[_MAX_REL], relative.max())
        flat = abs_error.reshape(-1)
        index = flat.argmax()
        self.largest.append(torch.stack([flat[index], (index + start * _row_size(reference)).to(torch.float64)]))
        self._add_positions(error_squares, reference_squares, start, token_axis)

    def _add_positions(self, error_squares, reference_squares, start: int, token_axis: int | None) -> None:
        if token_axis is None:
            return
        if token_axis == 0:   # the chunk's rows are positions start .. start + rows
            rows = error_squares.shape[0]
            self.position_error[start:start + rows] += error_squares.reshape(rows, -1).sum(dim=1)
            self.position_reference[start:start + rows] += reference_squares.reshape(rows, -1).sum(dim=1)
            return
        others = [axis for axis in range(error_squares.ndim) if axis != token_axis]
        self.position_error += error_squares.sum(dim=others)
        self.position_reference += reference_squares.sum(dim=others)

    def fill(self, sums: PairSums, shape: tuple[int, ...]) -> None:
        """Read the device's sums back into `sums` (the one copy to the host)."""
        import torch

        largest = torch.stack(self.largest) if self.largest else None   # (chunks, 2)
        values = self.scalars.tolist()
        (numel, sums.error_squares, sums.reference_squares_both, sums.candidate_squares_both, sums.dot,
         sums.abs_sum, sums.reference_squares, reference_finite, nan_reference, nan_candidate, inf_reference,
         inf_candidate) = values[:_MAX_REL]
        sums.max_rel = values[_MAX_REL]
        sums.numel, sums.reference_finite = int(numel), int(reference_finite)
        sums.nan_reference, sums.nan_candidate = int(nan_reference), int(nan_candidate)
        sums.inf_reference, sums.inf_candidate = int(inf_reference), int(inf_candidate)
        sums.position_error = self.position_error.cpu().numpy()
        sums.position_reference = self.position_reference.cpu().numpy()
        if largest is not None and sums.numel:
            worst_chunk = int(largest[:, 0].argmax())   # the first chunk holding the largest, as the CPU pass
            value, flat_index = largest[worst_chunk].tolist()
            sums.max_abs = value
            sums.worst = tuple(int(i) for i in np.unravel_index(int(flat_index), shape or (1,)))


_SCALARS = 13     # the twelve sums of add(), then max_rel
_MAX_REL = 12


def _row_size(tensor) -> int:
    return math.prod(tensor.shape[1:])


def _mismatched(reference, candidate, tolerance: Tolerance) -> int:
    """Elements outside atol + rtol * |r| (a non-finite disagreement counts; an agreement does not)."""
    import torch

    reference, candidate = reference.to(torch.float64), candidate.to(torch.float64)
    both = torch.isfinite(reference) & torch.isfinite(candidate)
    agreeing = (torch.isnan(reference) & torch.isnan(candidate)) | (torch.isinf(reference) & (reference == candidate))
    abs_error = torch.where(both, (candidate - reference).abs(), torch.where(agreeing, 0.0, torch.inf))
    bound = torch.where(both, reference.abs(), 0.0) * tolerance.rtol + tolerance.atol
    return int((abs_error > bound).sum())
