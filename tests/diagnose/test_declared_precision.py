"""declared_precision: a candidate holding a checkpoint in float16 or bfloat16 while it declares float32."""

import numpy as np
import pytest

from detector_cases import CONFIG, rng
from parity.core.compare import compare
from parity.core.trace import make_trace
from parity.diagnose import diagnose

R = rng(11)
EMBED = R.standard_normal((6, 32))
OUT = R.standard_normal((6, 32))


def to_bfloat16(values: np.ndarray) -> np.ndarray:
    """Rounded to the nearest bfloat16 (ties away), as float64."""
    bits = values.astype(np.float32).view(np.uint32)
    return ((bits + np.uint32(0x8000)) & np.uint32(0xFFFF0000)).view(np.float32).astype(np.float64)


def diagnoses(candidate_embed: np.ndarray, declared: str | None = "float32"):
    reference = make_trace({"embed": EMBED, "layers.0.out": OUT}, {"dtype": "float64", "config": CONFIG})
    metadata = {"dtype": declared} if declared else {}
    candidate = make_trace({"embed": candidate_embed, "layers.0.out": OUT}, metadata)
    comparison = diagnose(compare(reference, candidate), reference, candidate)
    return {d.cause: d.message for d in comparison.diagnoses}


@pytest.mark.parametrize("rounded, narrower", [(lambda v: v.astype(np.float16).astype(np.float64), "float16"),
                                               (to_bfloat16, "bfloat16")])
def test_values_of_a_narrower_format_under_a_float32_declaration_are_named(rounded, narrower):
    found = diagnoses(rounded(EMBED))
    assert set(found) == {"declared_precision"}
    assert f"a {narrower}" in found["declared_precision"] and "declares float32" in found["declared_precision"]


def test_a_trace_that_declares_no_dtype_is_told_so():
    found = diagnoses(EMBED.astype(np.float16).astype(np.float64), declared=None)
    assert "declares no dtype" in found["declared_precision"]


def test_noise_of_the_same_size_that_no_format_holds_is_not_named():
    noisy = EMBED * (1 + 3e-4 * R.standard_normal(EMBED.shape))
    assert "declared_precision" not in diagnoses(noisy)


def test_a_candidate_that_declares_float16_is_held_to_float16_and_not_named():
    found = diagnoses(EMBED.astype(np.float16).astype(np.float64), declared="float16")
    assert "declared_precision" not in found
