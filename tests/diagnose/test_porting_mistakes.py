"""rope_theta and missing_bias on constructed examples."""

import numpy as np

from detector_cases import CONFIG, diagnoses, rng
from parity.diagnose.attention import apply_rope

R = rng(17)
T, HEADS, HEAD_DIM = 9, 4, 8


def rope_reference(theta=10000.0):
    q = R.standard_normal((T, HEADS * HEAD_DIM))
    return {"layers.0.q": q, "layers.0.q_rope": apply_rope(q, HEAD_DIM, theta, np.arange(T), "half")}


def test_rope_rotated_with_another_base():
    base = rope_reference()
    candidate = {**base, "layers.0.q_rope": apply_rope(base["layers.0.q"], HEAD_DIM, 1e6, np.arange(T), "half")}
    assert diagnoses(base, candidate) == [("rope_theta", "layers.0.q_rope")]


def test_rope_with_the_reference_base_and_other_values_is_not_a_base():
    base = rope_reference()
    candidate = {**base, "layers.0.q_rope": apply_rope(R.standard_normal((T, HEADS * HEAD_DIM)), HEAD_DIM, 1e4,
                                                       np.arange(T), "half")}
    assert "rope_theta" not in {cause for cause, _ in diagnoses(base, candidate)}


def test_a_bias_dropped_is_one_vector_at_every_position():
    x, bias = R.standard_normal((T, 32)), 0.5 * R.standard_normal(32)
    base = {"layers.0.attn_norm": R.standard_normal((T, 32)), "layers.0.q": x + bias}
    assert diagnoses(base, {**base, "layers.0.q": x}) == [("missing_bias", "layers.0.q")]


def test_a_recorded_bias_is_matched_with_the_offset():
    from parity.core.compare import compare
    from parity.core.trace import make_trace
    from parity.diagnose import diagnose
    from parity.diagnose.biases import missing_bias
    from parity.diagnose.context import Context, model_config

    x, bias = R.standard_normal((T, 32)), 0.5 * R.standard_normal(32)
    base = {"layers.0.attn_norm": R.standard_normal((T, 32)), "layers.0.q": x + bias, "layers.0.q.bias": bias}
    reference = make_trace(base, {"dtype": "float32", "config": CONFIG})
    candidate = make_trace({**base, "layers.0.q": x, "layers.0.q.bias": np.zeros(32)}, {"dtype": "float32"})
    comparison = diagnose(compare(reference, candidate), reference, candidate)
    # the recorded biases differ: weight_mismatch names them, and the offset is matched with the bias
    assert ("weight_mismatch", "layers.0.q") in [(d.cause, d.checkpoint) for d in comparison.diagnoses]
    found = list(missing_bias(Context(comparison, reference, candidate, model_config(reference))))
    assert found and "the bias was dropped" in found[0].message


def test_an_error_that_varies_by_position_is_not_a_bias():
    x = R.standard_normal((T, 32))
    base = {"layers.0.q": x}
    assert "missing_bias" not in {cause for cause, _ in diagnoses(base, {"layers.0.q": x + R.standard_normal((T, 32))})}


def test_a_constant_offset_over_inputs_that_barely_vary_is_no_evidence_of_a_bias():
    """Rows that share most of their energy turn any weight error into a near-constant offset."""
    shared = R.standard_normal(32)
    x = shared + 0.05 * R.standard_normal((T, 32))
    weight = R.standard_normal((32, 32))
    base = {"layers.0.attn_norm": x, "layers.0.q": x @ weight.T}
    candidate = {**base, "layers.0.q": x @ (weight + 0.5 * R.standard_normal((32, 32))).T}
    assert "missing_bias" not in {cause for cause, _ in diagnoses(base, candidate)}
