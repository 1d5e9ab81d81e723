import math

import numpy as np
import pytest

from parity.core.metrics import measure, rel_l2, rms
from parity.core.results import Tolerance

LOOSE = Tolerance(atol=1e-6, rtol=1e-6, basis="test")


def test_metrics_of_a_known_difference():
    reference = np.array([[1.0, 2.0], [3.0, 4.0]])
    candidate = np.array([[1.0, 2.0], [3.0, 4.5]])
    metrics = measure(reference, candidate, LOOSE)
    assert metrics.max_abs == pytest.approx(0.5, rel=1e-15)
    assert metrics.mean_abs == pytest.approx(0.125, rel=1e-15)
    assert metrics.rel_l2 == pytest.approx(0.5 / math.sqrt(30))
    assert metrics.max_rel == pytest.approx(0.125)
    assert metrics.mismatched == 1 and metrics.numel == 4
    assert metrics.worst_index == (1, 1) and metrics.worst_position == 1
    assert metrics.cosine == pytest.approx(np.dot(reference.ravel(), candidate.ravel())
                                           / np.linalg.norm(reference) / np.linalg.norm(candidate))


def test_identical_tensors_have_no_error():
    values = np.random.default_rng(0).standard_normal((5, 7))
    metrics = measure(values, values.copy(), LOOSE)
    assert metrics.max_abs == 0.0 and metrics.rel_l2 == 0.0 and metrics.mismatched == 0  # exact: x - x is 0
    assert metrics.cosine == pytest.approx(1.0, abs=1e-12)  # a dot product: the BLAS kernel's rounding varies by CPU


def test_tolerance_is_atol_plus_rtol_times_reference():
    reference = np.array([100.0, 0.0])
    within = measure(reference, np.array([100.9, 0.09]), Tolerance(atol=0.1, rtol=0.01, basis="t"))
    outside = measure(reference, np.array([101.2, 0.0]), Tolerance(atol=0.1, rtol=0.01, basis="t"))
    assert within.mismatched == 0 and outside.mismatched == 1


def test_nan_in_candidate_only_is_a_mismatch_of_infinite_size():
    reference = np.array([1.0, 2.0, 3.0])
    metrics = measure(reference, np.array([1.0, np.nan, 3.0]), LOOSE)
    assert metrics.mismatched == 1 and metrics.nan_candidate == 1 and metrics.nan_reference == 0
    assert metrics.max_abs == math.inf and metrics.worst_index == (1,)
    assert metrics.rel_l2 == 0.0  # over the elements finite on both sides


def test_matching_nonfinite_values_agree_and_opposite_infinities_do_not():
    reference = np.array([np.nan, np.inf, -np.inf, 1.0])
    assert measure(reference, reference.copy(), LOOSE).mismatched == 0
    flipped = measure(reference, np.array([np.nan, -np.inf, -np.inf, 1.0]), LOOSE)
    assert flipped.mismatched == 1 and flipped.inf_candidate == 2 and flipped.inf_reference == 2


def test_empty_tensors_compare_equal():
    metrics = measure(np.zeros((0, 4)), np.zeros((0, 4)), LOOSE)
    assert metrics.numel == 0 and metrics.mismatched == 0 and metrics.worst_index is None


def test_attention_probabilities_report_the_query_position():
    reference = np.zeros((2, 3, 3))
    candidate = reference.copy()
    candidate[1, 2, 0] = 1.0
    assert measure(reference, candidate, LOOSE, token_axis=1).worst_position == 2


def test_zero_reference_norms():
    # exact: zero norms are special-cased before any arithmetic
    assert rel_l2(np.zeros(3), np.zeros(3)) == 0.0
    assert rel_l2(np.zeros(3), np.ones(3)) == math.inf
    assert measure(np.zeros(3), np.zeros(3), LOOSE).cosine == 1.0
    assert measure(np.zeros(3), np.ones(3), LOOSE).cosine == 0.0


def test_shapes_must_match():
    with pytest.raises(ValueError):
        measure(np.zeros(3), np.zeros(4), LOOSE)


def test_rms_ignores_nonfinite_values():
    assert rms(np.array([3.0, -3.0, np.nan, np.inf])) == pytest.approx(3.0, rel=1e-15)
    assert rms(np.array([])) == 0.0


# --- the chunked pass against the plain formulas, on chunk boundaries --------------------


def plain_metrics(reference, candidate, tolerance, token_axis):
    with np.errstate(divide="ignore", invalid="ignore"):
        return _plain_metrics(reference, candidate, tolerance, token_axis)


def _plain_metrics(reference, candidate, tolerance, token_axis):
    """The metrics by their definitions, on the whole tensor at once, in float64."""
    reference, candidate = reference.astype(np.float64), candidate.astype(np.float64)
    finite = np.isfinite(reference) & np.isfinite(candidate)
    agreeing = (np.isnan(reference) & np.isnan(candidate)) | (np.isinf(reference) & (reference == candidate))
    with np.errstate(invalid="ignore", over="ignore"):
        error = np.where(finite, np.abs(candidate - reference), np.where(agreeing, 0.0, np.inf))
    r, c = np.where(finite, reference, 0.0), np.where(finite, candidate, 0.0)
    bound = tolerance.atol + tolerance.rtol * np.abs(r)
    moved_r = np.moveaxis(r, token_axis, 0).reshape(r.shape[token_axis], -1)
    moved_e = np.moveaxis(c - r, token_axis, 0).reshape(r.shape[token_axis], -1)
    nonzero = (np.abs(r) > 0) & finite
    return {
        "max_abs": error.max(), "mean_abs": error.mean(), "mismatched": int((error > bound).sum()),
        "rel_l2": np.linalg.norm(c - r) / np.linalg.norm(r),
        "cosine": np.dot(r.ravel(), c.ravel()) / np.linalg.norm(r) / np.linalg.norm(c),
        "max_rel": (error[nonzero] / np.abs(r[nonzero])).max(initial=0.0),
        "worst_index": np.unravel_index(int(np.argmax(error)), r.shape),
        "per_position": np.nan_to_num(np.linalg.norm(moved_e, axis=1) / np.linalg.norm(moved_r, axis=1), nan=0.0,
                                      posinf=np.inf),  # 0/0 (a position with nothing finite) is no error
        "nan_candidate": int(np.isnan(candidate).sum()),
    }


@pytest.mark.parametrize("shape, token_axis", [((7, 50), 0), ((3, 11, 13), 1), ((2, 5, 40), 1), ((301,), 0),
                                               ((4, 3, 9, 10), 2), ((5, 130), 0)])
@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.float16])
def test_the_chunked_pass_equals_the_plain_formulas(monkeypatch, shape, token_axis, dtype):
    import parity.core.metrics as metrics_module

    monkeypatch.setattr(metrics_module, "CHUNK_ELEMENTS", 64)  # many chunks, rows split across them
    monkeypatch.setattr(metrics_module, "_WORKSPACES", __import__("threading").local())
    rng = np.random.default_rng(sum(shape))
    reference = rng.standard_normal(shape).astype(dtype)
    candidate = (reference + 1e-3 * rng.standard_normal(shape)).astype(dtype)
    reference.flat[::17] = 0.0                      # zeros: no relative error there
    candidate.flat[5] = np.nan                      # a chunk with a non-finite value
    tolerance = Tolerance(atol=1e-3, rtol=1e-3, basis="test")
    measurement = metrics_module.measure_pair(reference, candidate, tolerance, token_axis=token_axis)
    expected = plain_metrics(reference, candidate, tolerance, token_axis)
    metrics = measurement.metrics
    assert metrics.max_abs == math.inf and metrics.worst_index == tuple(int(i) for i in np.unravel_index(5, shape))
    for name in ("mean_abs", "rel_l2", "cosine", "max_rel"):
        finite_expected = expected[name] if name != "mean_abs" else math.inf
        assert getattr(metrics, name) == pytest.approx(finite_expected, rel=1e-6), name
    assert metrics.mismatched == expected["mismatched"]
    assert metrics.nan_candidate == expected["nan_candidate"] == 1
    np.testing.assert_allclose(measurement.per_position, expected["per_position"], rtol=1e-6)


def test_a_tolerance_made_from_the_rms_counts_mismatches_after_the_pass(monkeypatch):
    import parity.core.metrics as metrics_module

    monkeypatch.setattr(metrics_module, "CHUNK_ELEMENTS", 32)
    monkeypatch.setattr(metrics_module, "_WORKSPACES", __import__("threading").local())
    reference = np.random.default_rng(1).standard_normal((10, 20))
    candidate = reference.copy()
    candidate[4, 7] += 1.0
    seen = []

    def rule(reference_rms):
        seen.append(reference_rms)
        return Tolerance(atol=0.1 * reference_rms, rtol=0.0, basis="rms")

    measurement = metrics_module.measure_pair(reference, candidate, rule)
    assert seen == [pytest.approx(rms(reference))]
    assert measurement.metrics.mismatched == 1 and measurement.tolerance.atol == pytest.approx(0.1 * seen[0])


def test_tiny_and_huge_float32_values_are_measured_in_float64():
    tiny = np.full((4, 8), 1e-25, dtype=np.float32)
    shifted = tiny * np.float32(1.5)
    assert measure(tiny, shifted, LOOSE).rel_l2 == pytest.approx(0.5, rel=1e-6)   # float32 squares underflow
    huge = np.full((4, 8), 3e20, dtype=np.float32)
    assert measure(huge, huge * np.float32(1.5), LOOSE).rel_l2 == pytest.approx(0.5, rel=1e-6)  # and overflow
