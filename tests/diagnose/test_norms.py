"""Norms fitted from their tensors (norms.py): the weight convention (w or 1 + w), centring, grouping
and where the weight is applied, each under its own name and not another's."""

import numpy as np

from detector_cases import CONFIG, diagnoses, rng

R = rng(31)
T, WIDTH, HEAD_DIM = 8, 32, 8
WEIGHT = 1 + 0.2 * R.standard_normal(WIDTH)   # a Llama weight (the whole scale); Gemma stores it less 1


def rms_norm(x, weight=WEIGHT, eps=1e-6, centred=False, group=WIDTH):
    rows = x.reshape(-1, group)
    rows = rows - rows.mean(-1, keepdims=True) if centred else rows
    return weight * (rows / np.sqrt(np.mean(rows * rows, -1, keepdims=True) + eps)).reshape(x.shape)


def test_a_weight_used_as_one_plus_weight_is_the_convention_and_nothing_else():
    x = 0.05 * R.standard_normal((T, WIDTH))
    base = {"embed": x, "layers.0.attn_norm": rms_norm(x)}
    found = diagnoses(base, {**base, "layers.0.attn_norm": rms_norm(x, 1 + WEIGHT)})
    assert found == [("norm_weight_convention", "layers.0.attn_norm")]


def test_a_gemma_weight_used_without_its_one():
    x = 0.05 * R.standard_normal((T, WIDTH))
    base = {"embed": x, "layers.0.attn_norm": rms_norm(x, 1 + WEIGHT)}      # the model scales by 1 + w
    candidate = {**base, "layers.0.attn_norm": rms_norm(x, WEIGHT)}

    (diagnosis,) = _diagnosed(base, candidate)
    assert diagnosis.cause == "norm_weight_convention" and diagnosis.confidence == "confirmed"
    assert "the stored weight alone" in diagnosis.message


def _diagnosed(reference, candidate):
    from parity.core.compare import compare
    from parity.core.trace import make_trace
    from parity.diagnose import diagnose

    reference_trace = make_trace(reference, {"dtype": "float32", "config": CONFIG})
    candidate_trace = make_trace(candidate, {"dtype": "float32"})
    return diagnose(compare(reference_trace, candidate_trace), reference_trace, candidate_trace).diagnoses


def test_rows_centred_as_a_layer_norm_would():
    x = 0.05 * R.standard_normal((T, WIDTH)) + 0.02
    base = {"embed": x, "layers.0.attn_norm": rms_norm(x)}
    found = diagnoses(base, {**base, "layers.0.attn_norm": rms_norm(x, centred=True)})
    assert found == [("norm_variant", "layers.0.attn_norm")]


def test_a_per_head_norm_taken_over_the_whole_row():
    q = R.standard_normal((T, WIDTH)) * np.repeat(1 + np.arange(4), HEAD_DIM)   # heads of different sizes
    head_weight = 1 + 0.2 * R.standard_normal(HEAD_DIM)
    tiled = np.tile(head_weight, 4)
    base = {"layers.0.q": q, "layers.0.q_norm": rms_norm(q, tiled, group=HEAD_DIM)}
    candidate = {**base, "layers.0.q_norm": rms_norm(q, tiled, group=WIDTH)}
    (diagnosis,) = _diagnosed(base, candidate)
    assert diagnosis.cause == "norm_variant" and "all 4 heads at once" in diagnosis.message


def test_the_weight_applied_before_normalizing():
    x = 0.05 * R.standard_normal((T, WIDTH))
    base = {"embed": x, "layers.0.attn_norm": rms_norm(x)}
    found = diagnoses(base, {**base, "layers.0.attn_norm": rms_norm(x * WEIGHT, np.ones(WIDTH))})
    assert found == [("norm_variant", "layers.0.attn_norm")]


def test_rows_divided_by_another_spread():
    x = 0.05 * R.standard_normal((T, WIDTH))
    base = {"embed": x, "layers.0.attn_norm": rms_norm(x)}
    unbiased = WEIGHT * x / np.sqrt(np.sum(x ** 2, -1, keepdims=True) / (WIDTH - 1) + 1e-6)
    mean_absolute = WEIGHT * x / (np.mean(np.abs(x), -1, keepdims=True) + 1e-6)
    for spread, words in ((unbiased, "over n - 1 values"), (mean_absolute, "mean absolute value")):
        (diagnosis,) = _diagnosed(base, {**base, "layers.0.attn_norm": spread})
        assert diagnosis.cause == "norm_variant" and words in diagnosis.message, diagnosis   # no epsilon fitted


def test_another_epsilon_is_not_a_convention_or_a_variant():
    x = 0.01 * R.standard_normal((T, WIDTH))
    base = {"embed": x, "layers.0.attn_norm": rms_norm(x)}
    found = diagnoses(base, {**base, "layers.0.attn_norm": rms_norm(x, eps=1e-5)})
    assert found == [("norm_epsilon", "layers.0.attn_norm")]


def test_no_epsilon_at_all():
    x = 0.01 * R.standard_normal((T, WIDTH))
    base = {"embed": x, "layers.0.attn_norm": rms_norm(x)}
    (diagnosis,) = _diagnosed(base, {**base, "layers.0.attn_norm": rms_norm(x, eps=0.0)})
    assert diagnosis.cause == "norm_epsilon" and "(none)" in diagnosis.message and diagnosis.confidence == "confirmed"
