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
