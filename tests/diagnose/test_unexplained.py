"""A failure no detector explains is reported as no_known_cause with its evidence, never as noise."""

import numpy as np

from detector_cases import CONFIG, rng
from parity.core.compare import compare
from parity.core.trace import make_trace
from parity.diagnose import diagnose

R = rng(13)
T, WIDTH = 8, 32


def diagnosed(reference: dict, candidate: dict):
    reference_trace = make_trace(reference, {"dtype": "float32", "config": CONFIG})
    candidate_trace = make_trace(candidate, {"dtype": "float32"})
    return diagnose(compare(reference_trace, candidate_trace), reference_trace, candidate_trace)


def test_an_unexplained_error_gets_its_structure_fits_and_correlations():
    x = R.standard_normal((T, WIDTH))
    mlp_out = R.standard_normal((T, WIDTH))
    base = {"layers.0.resid_mid": x, "layers.0.mlp_out": mlp_out, "layers.0.out": x + mlp_out}
    error = np.zeros((T, WIDTH))
    error[5, :] = 0.5 * x[5]          # one position, along the residual stream
    comparison = diagnosed(base, {**base, "layers.0.out": base["layers.0.out"] + error})
    assert [(d.cause, d.checkpoint) for d in comparison.diagnoses] == [("no_known_cause", "layers.0.out")]
    message = comparison.diagnoses[0].message
    assert "concentrated at positions [5" in message
    assert "best scalar fit" in message and "best affine fit" in message
    assert "points along layers.0.resid_mid" in message


def test_an_error_in_one_head_is_said_to_be_in_that_head():
    q = R.standard_normal((T, 4 * 8))
    candidate = q.copy()
    candidate[:, 16:24] = R.standard_normal((T, 8))  # head 2
    comparison = diagnosed({"layers.0.q": q}, {"layers.0.q": candidate})
    assert "head 2 holds" in comparison.diagnoses[0].message


def test_a_failing_comparison_that_looks_like_rounding_is_not_called_noise():
    x = R.standard_normal((T, WIDTH))
    noisy = x + 1e-3 * R.standard_normal((T, WIDTH))  # fails float32's fixed tolerance, looks like rounding
    comparison = diagnosed({"layers.0.out": x}, {"layers.0.out": noisy})
    assert not comparison
    assert [d.cause for d in comparison.diagnoses] == ["no_known_cause"]
    assert any("look like rounding" in note for note in comparison.notes)


def test_noise_is_not_claimed_when_decoding_fails_after_a_passing_forward_pass():
    import dataclasses

    from parity.core.decode_consistency import compare_decode
    from parity.diagnose import without_noise_on_failure

    x = R.standard_normal((T, WIDTH))
    reference_trace = make_trace({"layers.0.out": x}, {"dtype": "float32", "config": CONFIG})
    passing = diagnose(compare(reference_trace, reference_trace, config=_calibrated(x)), reference_trace,
                       reference_trace)
    assert [d.cause for d in passing.diagnoses] == ["precision_noise"]
    decode = compare_decode([x[-1]], [x[-1] + 1.0], [1e-3], prompt_length=T, basis="test")
    failed = without_noise_on_failure(dataclasses.replace(passing, decode=decode))
    assert not failed and "precision_noise" not in [d.cause for d in failed.diagnoses]
    assert without_noise_on_failure(passing) == passing


def _calibrated(x):
    from parity.core.calibrate import noise_floors
    from parity.core.compare import CompareConfig

    lowp = make_trace({"layers.0.out": x + 1e-6 * R.standard_normal(x.shape)}, {"dtype": "float32"})
    return CompareConfig(noise=noise_floors(make_trace({"layers.0.out": x}, {}), lowp), noise_dtype="bfloat16")


def test_the_fits_from_sums_match_a_least_squares_solve(monkeypatch):
    import numpy as np

    from parity.diagnose import unexplained

    rng = np.random.default_rng(4)
    reference = rng.standard_normal((64, 48))
    candidate = 1.7 * reference - 0.3 + 0.05 * rng.standard_normal((64, 48))
    design = np.stack([reference.ravel(), np.ones(reference.size)], axis=1)
    (slope, intercept), *_ = np.linalg.lstsq(design, candidate.ravel(), rcond=None)
    monkeypatch.setattr(unexplained, "_CHUNK", 100)   # residuals summed over 31 chunks
    text = unexplained._fits(reference, candidate)
    assert f"best affine fit {slope:.4g} x reference {intercept:+.3g}" in text
    affine = np.linalg.norm(candidate - slope * reference - intercept) / np.linalg.norm(reference)
    assert text.endswith(f"leaves {affine:.3g}")
    scale = float(np.sum(candidate * reference)) / float(np.sum(reference * reference))
    assert f"best scalar fit candidate = {scale:.4g} x reference" in text
    constant = unexplained._fits(np.full((4, 4), 2.0), np.full((4, 4), 3.0))   # no slope to fit: the mean
    assert "best affine fit 0 x reference +3 leaves 0" in constant


def test_the_hint_fits_the_op_no_weights_for_a_weightless_one():
    import pytest

    from parity.diagnose.unexplained import OP_HINTS, WEIGHTED

    for kind in ("q_rope", "k_rope", "attn_probs", "attn_ctx", "resid_mid", "out", "mlp_act"):
        assert "weights or their conversion" not in OP_HINTS[kind] and "no weights" in OP_HINTS[kind]
    assert "--weights" in WEIGHTED
    x = R.standard_normal((T, WIDTH))
    base = {"layers.0.q": x, "layers.0.q_rope": x}                  # a q_rope broken in no known way
    candidate = {**base, "layers.0.q_rope": x + np.sin(5 * x)}
    message = diagnosed(base, candidate).diagnoses[0].message
    assert "the rotation (it has no weights)" in message and "--weights" not in message
    if "ruled out" not in message:
        pytest.fail(message)


def test_an_input_the_candidate_does_not_compare_is_not_said_to_pass():
    x = R.standard_normal((T, WIDTH))
    reference_trace = make_trace({"layers.0.q": x, "layers.0.q_rope": x}, {"dtype": "float32", "config": CONFIG})
    candidate_trace = make_trace({"layers.0.q_rope": x + np.sin(5 * x)},
                                 {"dtype": "float32", "not_comparable": {"layers.0.q": "the graph does not hold it"}})
    comparison = compare(reference_trace, candidate_trace)
    message = diagnose(comparison, reference_trace, candidate_trace).diagnoses[0].message
    assert "its input layers.0.q is not comparable: the error starts there or in the op" in message, message
    assert "passes" not in message


def test_what_was_ruled_out_and_the_nearest_miss():
    x = 0.05 * R.standard_normal((T, WIDTH))
    gamma = 1 + 0.2 * R.standard_normal(WIDTH)
    normed = gamma * x / np.sqrt(np.mean(x * x, -1, keepdims=True) + 1e-6)
    base = {"embed": x, "layers.0.attn_norm": normed}
    candidate = {**base, "layers.0.attn_norm": normed * (1 + 0.3 * np.cos(np.arange(WIDTH)))}   # a weight gone wrong
    message = diagnosed(base, candidate).diagnoses[0].message
    assert "ruled out: epsilon, weight convention (w or 1 + w)" in message
    assert "the norm: its weight, epsilon or formula" in message
