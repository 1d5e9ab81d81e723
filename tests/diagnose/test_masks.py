"""The mask fitted from the probabilities' zero pattern (masks.py): offsets and windows, the repair that
re-masks, softmax normalization, and a float16 overflow that is no window."""

import numpy as np
import pytest

from detector_cases import rng
from family_cases import diagnosed
from parity.diagnose.bands import Band, fit_band

T, HEADS = 10, 2


def probabilities(ahead=0, window=None, seed=3, tokens=T):
    scores = rng(seed).standard_normal((HEADS, tokens, tokens))
    visible = Band(ahead, window or tokens + abs(ahead), tokens, tokens).visible()
    scores = np.where(visible[None], scores, -np.inf)
    weights = np.exp(scores - scores.max(-1, keepdims=True))
    return weights / weights.sum(-1, keepdims=True)                                    # (H, T, S)


def found(reference, candidate, window=None):
    return diagnosed({"layers.0.attn_probs": reference}, {"layers.0.attn_probs": candidate},
                     {"layers": [{"sliding_window": window}]}).diagnoses


@pytest.mark.parametrize("ahead, window", [(0, None), (1, None), (0, 4), (0, 3), (2, 5)])
def test_the_band_is_read_off_the_zero_pattern(ahead, window):
    band = fit_band(probabilities(ahead, window))
    assert (band.ahead, min(band.window, T)) == (ahead, min(window or T, T))


def test_a_mask_off_by_one_is_named_with_both_patterns_and_confirmed():
    (diagnosis,) = found(probabilities(0), probabilities(1))
    assert diagnosis.cause == "causal_mask" and "off by one" in diagnosis.message
    assert diagnosis.confidence == "confirmed"     # dropping the extra key and renormalizing restores the reference


def test_a_window_one_key_too_narrow_is_likely_not_confirmed():
    (diagnosis,) = found(probabilities(0, 4), probabilities(0, 3), window=4)
    assert diagnosis.cause == "sliding_window" and "off by one" in diagnosis.message
    assert diagnosis.confidence == "likely"        # the key it hid cannot be recovered from its probabilities


def test_a_float16_overflow_is_nonfinite_and_no_window():
    """Scores past float16's range: exp() overflows to inf (inf / inf = NaN), others underflow to zero."""
    reference = probabilities(0, seed=4)
    scores = np.where(Band(0, T, T, T).visible()[None], 3 * rng(4).standard_normal((HEADS, T, T)), -np.inf)
    with np.errstate(all="ignore"):
        exps = np.exp(scores * 4).astype(np.float16)
        candidate = (exps / exps.sum(-1, keepdims=True)).astype(np.float32)
    assert not np.all(np.isfinite(candidate))
    causes = {d.cause for d in found(reference, candidate)}
    assert "nonfinite" in causes and "sliding_window" not in causes and "causal_mask" not in causes


def test_zeros_scattered_inside_the_band_are_no_mask():
    candidate = probabilities(0, seed=5)
    candidate[:, 6:, 2] = 0.0                          # underflow, not a band
    candidate /= candidate.sum(-1, keepdims=True)
    assert fit_band(candidate) is None


def test_a_softmax_over_the_wrong_axis():
    reference = probabilities(0)
    scores = np.where(Band(0, T, T, T).visible()[None], rng(3).standard_normal((HEADS, T, T)), -np.inf)
    columns = np.exp(scores - scores.max(-2, keepdims=True))
    columns /= columns.sum(-2, keepdims=True)
    (diagnosis,) = found(reference, columns)
    assert diagnosis.cause == "softmax_normalization" and "wrong axis" in diagnosis.message


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
@pytest.mark.parametrize("family", ["mistral", "gemma3", "gpt2", "llama_peaked"])
def test_a_correct_port_has_the_reference_s_bands(family, dtype):
    pytest.importorskip("transformers")
    from planted_bugs import families

    reference, candidate, _ = families().compared(family, dtype=dtype)
    for name in (n for n in reference.names if n.endswith("attn_probs")):
        assert fit_band(candidate[name].astype(np.float64), dtype) == fit_band(reference[name].astype(np.float64)), name
