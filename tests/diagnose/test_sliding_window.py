import numpy as np

from detector_cases import rng
from family_cases import diagnosed, found
from parity.diagnose.bands import reach

T, HEADS = 9, 2


def probabilities(window: int | None, seed: int = 5) -> np.ndarray:
    scores = rng(seed).standard_normal((HEADS, T, T))
    distance = np.arange(T)[:, None] - np.arange(T)[None, :]
    visible = (distance >= 0) & (distance < (window or T))
    scores = np.where(visible, scores, -np.inf)
    weights = np.exp(scores - scores.max(-1, keepdims=True))
    return weights / weights.sum(-1, keepdims=True)                   # (H, T, S)


def architecture(window):
    return {"layers": [{"sliding_window": window}]}


def test_reach_counts_the_keys_a_query_sees_itself_included():
    assert (reach(probabilities(3)), reach(probabilities(None))) == (3, T)


def test_a_window_off_by_one_is_named_with_both_widths():
    comparison = diagnosed({"layers.0.attn_probs": probabilities(3)}, {"layers.0.attn_probs": probabilities(4)},
                           architecture(3))
    message = next(d.message for d in comparison.diagnoses if d.cause == "sliding_window")
    assert "window 3" in message and "at most 3 keys" in message and "up to 4" in message and "off by one" in message


def test_a_window_not_applied_and_one_applied_to_a_global_layer():
    assert ("sliding_window", "layers.0.attn_probs") in found(
        {"layers.0.attn_probs": probabilities(3)}, {"layers.0.attn_probs": probabilities(None)}, architecture(3))
    assert ("sliding_window", "layers.0.attn_probs") in found(
        {"layers.0.attn_probs": probabilities(None)}, {"layers.0.attn_probs": probabilities(3)}, architecture(None))


def test_other_attention_errors_are_not_a_window():
    assert not any(c == "sliding_window" for c, _ in found(
        {"layers.0.attn_probs": probabilities(3)}, {"layers.0.attn_probs": probabilities(3, seed=6)}, architecture(3)))
