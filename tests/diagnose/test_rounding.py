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


WEIGHT = R.standard_normal((8, 8))
STEP = np.abs(WEIGHT).max(axis=1, keepdims=True) / 127     # int8, a scale per row
ON_GRID = np.round(WEIGHT / STEP) * STEP
GRID_L2 = float(np.sqrt((np.broadcast_to(STEP, WEIGHT.shape) ** 2).sum() / 12))


def _quantized(candidate_weight, inputs=None):
    entry = {"format": "int8 in blocks of 1x8", "rounding_l2": GRID_L2, **({"inputs": inputs} if inputs else {})}
    tensors = {"embed": REFERENCE["embed"], "layers.0.q": NOISY["layers.0.out"],
               "layers.0.q.weight": candidate_weight}
    reference = make_trace({"embed": REFERENCE["embed"], "layers.0.q": REFERENCE["layers.0.out"],
                            "layers.0.q.weight": WEIGHT}, {"dtype": "float64"})
    candidate = make_trace(tensors, {"dtype": "float32", "quantized_weights": {"layers.0.q.weight": entry}})
    comparison = diagnose(compare(reference, candidate), reference, candidate)
    return {d.cause: d for d in comparison.diagnoses}


def test_a_quantized_builds_weight_on_its_own_grid_is_its_rounding():
    causes = _quantized(ON_GRID)
    assert "as far from the reference's as rounding to its grid makes it" in causes["weight_rounding"].message
    assert "weight_mismatch" not in causes


def test_a_quantized_weight_off_its_grid_is_a_conversion_error():
    causes = _quantized(np.round(WEIGHT[::-1] / STEP) * STEP)      # another row order, then rounded
    assert "further from the reference's than rounding to its grid" in causes["weight_rounding"].message


def test_the_references_own_weights_and_an_input_quantized_as_it_runs_is_the_activations_rounding():
    causes = _quantized(WEIGHT, inputs="int8 per token")
    assert "weight_rounding" not in causes
    assert "quantizes its input as it runs (int8 per token" in causes["activation_quantization"].message
    assert "activation_quantization" not in _quantized(WEIGHT)       # the same weights, inputs not quantized
