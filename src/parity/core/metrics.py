"""Pure metric maths: one float64 pass over a reference/candidate pair of equal shape.

Non-finite values: a NaN facing a NaN, or an infinity facing the same infinity,
counts as agreement; any other non-finite element is a mismatch of infinite size.
The norm-based metrics (rel_l2, cosine) use only the elements finite on both sides.
"""

from __future__ import annotations

import numpy as np

from parity.core.results import Metrics, Tolerance


def measure(reference: np.ndarray, candidate: np.ndarray, tolerance: Tolerance, *, token_axis: int = 0) -> Metrics:
    """Metrics of `candidate` against `reference` (same shape) under `tolerance`."""
    if reference.shape != candidate.shape:
        raise ValueError(f"shapes differ: {reference.shape} vs {candidate.shape}")
    reference = reference.astype(np.float64, copy=False)
    candidate = candidate.astype(np.float64, copy=False)
    numel = reference.size
    nan_reference, nan_candidate = np.isnan(reference), np.isnan(candidate)
    inf_reference, inf_candidate = np.isinf(reference), np.isinf(candidate)
    finite = np.isfinite(reference) & np.isfinite(candidate)
    agreeing_nonfinite = (nan_reference & nan_candidate) | (inf_reference & (reference == candidate))
    disagreeing = ~finite & ~agreeing_nonfinite

    with np.errstate(invalid="ignore", over="ignore"):  # non-finite elements are replaced below
        abs_error = np.where(finite, np.abs(candidate - reference), 0.0)
    abs_error[disagreeing] = np.inf
    bound = tolerance.atol + tolerance.rtol * np.abs(np.where(finite, reference, 0.0))
    mismatched = int(np.count_nonzero(abs_error > bound))

    worst_index, worst_position = None, None
    if numel:
        flat = int(np.argmax(abs_error))
        worst_index = tuple(int(i) for i in np.unravel_index(flat, reference.shape))
        if reference.ndim > token_axis:
            worst_position = worst_index[token_axis]
    return Metrics(
        numel=numel,
        max_abs=float(abs_error.max()) if numel else 0.0,
        mean_abs=float(abs_error.mean()) if numel else 0.0,
        rel_l2=_rel_l2(reference[finite], candidate[finite]),
        cosine=_cosine(reference[finite], candidate[finite]),
        max_rel=_max_rel(reference[finite], candidate[finite]),
        mismatched=mismatched,
        nan_reference=int(nan_reference.sum()),
        nan_candidate=int(nan_candidate.sum()),
        inf_reference=int(inf_reference.sum()),
        inf_candidate=int(inf_candidate.sum()),
        worst_index=worst_index,
        worst_position=worst_position,
        position_rel_l2=float(per_position_rel_l2(reference, candidate, token_axis).max(initial=0.0)),
        reference_rms=rms(reference),
    )


def per_position_rel_l2(reference: np.ndarray, candidate: np.ndarray, token_axis: int = 0) -> np.ndarray:
    """rel_l2 of each token position (over the finite elements of both): (T,)."""
    if reference.ndim <= token_axis or reference.size == 0:
        return np.zeros(0)  # no position axis (a 1-d tensor where [H, T, S] was expected): no per-position view
    reference = np.moveaxis(np.asarray(reference, np.float64), token_axis, 0).reshape(reference.shape[token_axis], -1)
    candidate = np.moveaxis(np.asarray(candidate, np.float64), token_axis, 0).reshape(reference.shape)
    finite = np.isfinite(reference) & np.isfinite(candidate)
    reference = np.where(finite, reference, 0.0)
    error = np.where(finite, candidate, 0.0) - reference
    error_norm, reference_norm = np.linalg.norm(error, axis=1), np.linalg.norm(reference, axis=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = np.where(reference_norm > 0, error_norm / reference_norm, np.where(error_norm > 0, np.inf, 0.0))
    return ratio


def rel_l2(reference: np.ndarray, candidate: np.ndarray) -> float:
    """||candidate - reference|| / ||reference||, in float64."""
    return _rel_l2(np.asarray(reference, np.float64).ravel(), np.asarray(candidate, np.float64).ravel())


def _rel_l2(reference: np.ndarray, candidate: np.ndarray) -> float:
    error_norm = float(np.linalg.norm(candidate - reference))
    reference_norm = float(np.linalg.norm(reference))
    if reference_norm == 0.0:
        return 0.0 if error_norm == 0.0 else float("inf")
    return error_norm / reference_norm


def _cosine(reference: np.ndarray, candidate: np.ndarray) -> float:
    reference_norm, candidate_norm = np.linalg.norm(reference), np.linalg.norm(candidate)
    if reference_norm == 0.0 and candidate_norm == 0.0:
        return 1.0
    if reference_norm == 0.0 or candidate_norm == 0.0:
        return 0.0
    cosine = float(np.dot(reference.ravel(), candidate.ravel()) / (reference_norm * candidate_norm))
    return min(1.0, max(-1.0, cosine))  # rounding can step just past +-1


def _max_rel(reference: np.ndarray, candidate: np.ndarray) -> float:
    nonzero = reference != 0.0
    if not nonzero.any():
        return 0.0
    return float(np.max(np.abs(candidate[nonzero] - reference[nonzero]) / np.abs(reference[nonzero])))


def rms(array: np.ndarray) -> float:
    """Root mean square over finite elements; 0.0 for an empty or all-non-finite tensor."""
    values = np.asarray(array, dtype=np.float64)
    values = values[np.isfinite(values)]
    return float(np.sqrt(np.mean(values * values))) if values.size else 0.0
