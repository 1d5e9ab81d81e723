"""weight_rounding: named from the candidate's measured weight rounding, never without it."""

import numpy as np

from parity.core.compare import compare
from parity.core.trace import make_trace
from parity.diagnose import diagnose

R = np.random.default_rng(3)
REFERENCE = {"embed": R.standard_normal((4, 8)), "layers.0.out": R.standard_normal((4, 8))}
NOISY = {name: value + 1e-3 * R.standard_normal(value.shape) for name, value in REFERENCE.items()}


def _causes(rounding):
    reference = make_trace(REFERENCE, {"dtype": "float64"})
    candidate = make_trace(NOISY, {"dtype": "float32", "weight_rounding": rounding})
    comparison = diagnose(compare(reference, candidate), reference, candidate)
    return {d.cause: d for d in comparison.diagnoses}, comparison


def test_weights_rounded_as_their_format_rounds_are_the_cause_at_the_first_divergence():
    rounding = [{"name": "token_embd.weight", "type": "F16", "rel_l2": 2.1e-4, "expected_rel_l2": 2.1e-4},
                {"name": "blk.0.attn_norm.weight", "type": "F32", "rel_l2": 0.0, "expected_rel_l2": 0.0}]
    causes, comparison = _causes(rounding)
    assert causes["weight_rounding"].checkpoint == comparison.first_divergence.checkpoint == "embed"
    assert "rounded to F16: 1 of 2 tensors" in causes["weight_rounding"].message


def test_a_tensor_further_off_than_its_format_is_a_conversion_error():
    rounding = [{"name": "blk.0.attn_q.weight", "type": "Q8_0", "rel_l2": 0.9, "expected_rel_l2": 5e-3}]
    causes, _ = _causes(rounding)
    assert "conversion error, not rounding" in causes["weight_rounding"].message


def test_no_measurement_or_exact_weights_say_nothing():
    assert "weight_rounding" not in _causes(None)[0]
    exact = [{"name": "token_embd.weight", "type": "F32", "rel_l2": 0.0, "expected_rel_l2": 0.0}]
    assert "weight_rounding" not in _causes(exact)[0]
