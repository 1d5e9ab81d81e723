"""Head and column layouts (heads.py), reported as layout_permuted: undone and confirmed."""

import numpy as np

from detector_cases import CONFIG, rng
from parity.diagnose.heads import merged_without_transpose, unmerged

R = rng(43)
T, HEADS, HEAD_DIM = 6, 4, 8


def found(reference, candidate):
    from parity.core.compare import compare
    from parity.core.trace import make_trace
    from parity.diagnose import diagnose

    reference_trace = make_trace(reference, {"dtype": "float32", "config": CONFIG})
    candidate_trace = make_trace(candidate, {"dtype": "float32"})
    return diagnose(compare(reference_trace, candidate_trace), reference_trace, candidate_trace).diagnoses


def test_unmerged_undoes_a_merge_without_the_transpose():
    x = R.standard_normal((T, HEADS * HEAD_DIM))
    np.testing.assert_array_equal(unmerged(merged_without_transpose(x, HEADS), HEADS), x)


def test_heads_merged_without_the_transpose():
    ctx = R.standard_normal((T, HEADS * HEAD_DIM))
    (diagnosis,) = found({"layers.0.attn_ctx": ctx}, {"layers.0.attn_ctx": merged_without_transpose(ctx, HEADS)})
    assert (diagnosis.cause, diagnosis.confidence) == ("layout_permuted", "confirmed")
    assert "merged without the transpose" in diagnosis.message


def test_heads_in_another_order():
    ctx = R.standard_normal((T, HEADS * HEAD_DIM))
    reordered = ctx.reshape(T, HEADS, HEAD_DIM)[:, [2, 0, 3, 1]].reshape(T, -1)
    (diagnosis,) = found({"layers.0.attn_ctx": ctx}, {"layers.0.attn_ctx": reordered})
    assert diagnosis.cause == "layout_permuted" and "[2, 0, 3, 1]" in diagnosis.message
    assert diagnosis.confidence == "confirmed"


def test_heads_and_head_dim_transposed():
    ctx = R.standard_normal((T, HEADS * HEAD_DIM))
    swapped = ctx.reshape(T, HEADS, HEAD_DIM).transpose(0, 2, 1).reshape(T, -1)
    (diagnosis,) = found({"layers.0.attn_ctx": ctx}, {"layers.0.attn_ctx": swapped})
    assert diagnosis.cause == "layout_permuted" and "(head_dim, heads)" in diagnosis.message
    assert diagnosis.confidence == "confirmed"


def test_probabilities_of_heads_in_another_order():
    probs = np.abs(R.standard_normal((HEADS, T, T)))
    probs /= probs.sum(-1, keepdims=True)
    (diagnosis,) = found({"layers.0.attn_probs": probs}, {"layers.0.attn_probs": probs[::-1].copy()})
    assert diagnosis.cause == "layout_permuted" and "(reversed)" in diagnosis.message


def test_other_values_are_no_layout():
    ctx = R.standard_normal((T, HEADS * HEAD_DIM))
    causes = {d.cause for d in found({"layers.0.attn_ctx": ctx}, {"layers.0.attn_ctx": R.standard_normal(ctx.shape)})}
    assert causes == {"no_known_cause"}
