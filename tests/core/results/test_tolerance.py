"""The one mismatch message (Tolerance.explain) and the one ratio to the noise (Tolerance.noise_ratio)."""

import dataclasses

import pytest

from parity.core.results import CheckpointResult, Metrics, Tolerance, one_line

METRICS = Metrics(numel=96, max_abs=0.5, mean_abs=0.1, rel_l2=0.05, cosine=0.99, max_rel=1.0, mismatched=24,
                  nan_reference=0, nan_candidate=0, inf_reference=0, inf_candidate=0, worst_index=(3, 7),
                  worst_position=3, position_rel_l2=0.08, reference_rms=1.0)
CALIBRATED = Tolerance(atol=0.0, rtol=0.0, basis="calibrated: 3x the noise of bfloat16 + 0.0039", max_rel_l2=0.004,
                       max_position_rel_l2=0.006, noise_rel_l2=0.001)


def test_an_elementwise_tolerance_explains_itself_as_torch_testing_does():
    tolerance = Tolerance(atol=1e-4, rtol=1e-3, basis="float32 default, atol x rms")
    assert tolerance.explain(METRICS).splitlines() == [
        "Mismatched elements: 24 / 96 (25.0%)",
        "Greatest absolute difference: 0.5 at index (3, 7) (up to 0.0001 + 0.001·|ref| allowed)"]
    assert tolerance.noise_ratio(METRICS) is None and not tolerance.admits(METRICS)


def test_a_calibrated_tolerance_explains_the_error_against_its_bound_and_the_noise():
    assert CALIBRATED.explain(METRICS).splitlines() == [
        "rel_l2 0.05 > bound 0.004, 50x the noise floor 0.001",
        "allowed: rel_l2 0.004, worst position 0.006 (noise floor 0.001); got 0.05, 0.08: over the bound",
        "Greatest absolute difference: 0.5 at index (3, 7); 24/96 elements mismatched"]
    assert CALIBRATED.noise_ratio(METRICS) == pytest.approx(50.0)


def test_within_the_bound_and_over_it_at_one_position_only():
    within = dataclasses.replace(METRICS, rel_l2=0.002, position_rel_l2=0.003)
    assert CALIBRATED.admits(within) and CALIBRATED.explain(within).splitlines()[0] == (
        "rel_l2 0.002 <= bound 0.004, 2x the noise floor 0.001")
    assert CALIBRATED.explain(within).splitlines()[1].endswith(": within the bound")
    one_position = dataclasses.replace(within, position_rel_l2=0.03)
    assert not CALIBRATED.admits(one_position)
    assert CALIBRATED.explain(one_position).splitlines()[1].endswith("got 0.002, 0.03: over the bound")


def test_a_zero_noise_floor_is_said_as_such_and_a_large_ratio_has_no_exponent():
    exact = dataclasses.replace(CALIBRATED, noise_rel_l2=0.0, max_rel_l2=1e-6, max_position_rel_l2=1e-6)
    lines = exact.explain(METRICS).splitlines()
    assert lines[0] == "rel_l2 0.05 > bound 1e-06: the candidate's precision computes this checkpoint exactly"
    assert "(noise floor 0: exact at this precision); got 0.05" in lines[1] and exact.noise_ratio(METRICS) is None
    far = dataclasses.replace(CALIBRATED, noise_rel_l2=1e-5)
    assert far.explain(METRICS).splitlines()[0] == "rel_l2 0.05 > bound 0.004, 5000x the noise floor 1e-05"


def test_new_nonfinite_values_fail_a_calibrated_bound_and_say_so():
    nan = dataclasses.replace(METRICS, rel_l2=0.001, position_rel_l2=0.001, nan_candidate=2)
    assert not CALIBRATED.admits(nan)
    assert CALIBRATED.explain(nan).splitlines()[1].endswith("the candidate has NaN or Inf where the reference has none")


def test_a_result_shows_its_reason_only_where_it_adds_to_the_explanation():
    tolerance = Tolerance(atol=1e-4, rtol=1e-3, basis="user")
    explained = CheckpointResult("layers.0.q", "fail", (6, 16), (6, 16), METRICS, tolerance,
                                 reason=one_line(tolerance.explain(METRICS)))
    assert explained.note is None and explained.explanation == tuple(tolerance.explain(METRICS).splitlines())
    routed = dataclasses.replace(explained, reason="3/6 tokens routed to other experts")
    assert routed.note == "3/6 tokens routed to other experts" and routed.explanation[-1] == routed.note
    unmeasured = CheckpointResult("layers.0.q", "fail", (4, 8), (5, 8), reason="shape mismatch")
    assert unmeasured.explanation == ("shape mismatch",) and unmeasured.noise_ratio is None
