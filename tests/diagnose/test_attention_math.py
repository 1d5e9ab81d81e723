import numpy as np

from detector_cases import CONFIG, causes, diagnoses, rng
from parity.diagnose.attention_math import attend

R = rng(5)
T, HEADS, KV_HEADS, HEAD_DIM = 7, 4, 2, 8
SHAPE = dict(heads=HEADS, kv_heads=KV_HEADS, head_dim=HEAD_DIM)


def reference():
    """q, k (after RoPE), v, probabilities and context of one layer, attention peaked as a trained model's."""
    q, k = 1.5 * R.standard_normal((T, HEADS * HEAD_DIM)), 1.5 * R.standard_normal((T, KV_HEADS * HEAD_DIM))
    v = R.standard_normal((T, KV_HEADS * HEAD_DIM))
    probs, ctx = attend(q, k, v, scale=HEAD_DIM ** -0.5, **SHAPE)
    return {"layers.0.q_rope": q, "layers.0.k_rope": k, "layers.0.v": v,
            "layers.0.attn_probs": probs, "layers.0.attn_ctx": ctx}


def without_probs(tensors):
    return {name: tensor for name, tensor in tensors.items() if name != "layers.0.attn_probs"}


def test_attention_matches_a_direct_softmax():
    base = reference()
    q, k = base["layers.0.q_rope"][:, :HEAD_DIM], base["layers.0.k_rope"][:, :HEAD_DIM]   # head 0 reads KV head 0
    scores = q @ k.T / np.sqrt(HEAD_DIM) + np.triu(np.full((T, T), -np.inf), k=1)
    expected = np.exp(scores - scores.max(-1, keepdims=True))
    np.testing.assert_allclose(base["layers.0.attn_probs"][0], expected / expected.sum(-1, keepdims=True), rtol=1e-12)


def test_attention_scaled_by_one_over_head_dim_in_the_probabilities():
    base = reference()
    probs, _ = attend(base["layers.0.q_rope"], base["layers.0.k_rope"], base["layers.0.v"], scale=1 / HEAD_DIM, **SHAPE)
    assert ("attention_scale", "layers.0.attn_probs") in diagnoses(base, {**base, "layers.0.attn_probs": probs})


def test_attention_scale_seen_in_the_context_alone():
    base = without_probs(reference())
    _, ctx = attend(base["layers.0.q_rope"], base["layers.0.k_rope"], base["layers.0.v"], scale=1.0, **SHAPE)
    found = diagnoses(base, {**base, "layers.0.attn_ctx": ctx})
    assert found == [("attention_scale", "layers.0.attn_ctx")]


def test_q_and_k_swapped_at_their_use():
    q, k = 1.5 * R.standard_normal((T, HEADS * HEAD_DIM)), 1.5 * R.standard_normal((T, HEADS * HEAD_DIM))
    config = {**CONFIG, "num_key_value_heads": HEADS}
    shape = {**SHAPE, "kv_heads": HEADS}
    v = R.standard_normal((T, HEADS * HEAD_DIM))
    probs, ctx = attend(q, k, v, scale=HEAD_DIM ** -0.5, **shape)
    base = {"layers.0.q_rope": q, "layers.0.k_rope": k, "layers.0.v": v, "layers.0.attn_probs": probs,
            "layers.0.attn_ctx": ctx}
    probs, ctx = attend(k, q, base["layers.0.v"], scale=HEAD_DIM ** -0.5, **shape)   # q and k recorded right
    assert diagnoses(base, {**base, "layers.0.attn_probs": probs, "layers.0.attn_ctx": ctx}, config) == [
        ("swapped_operands", "layers.0.attn_probs")]
    only_ctx = without_probs(base)
    assert diagnoses(only_ctx, {**only_ctx, "layers.0.attn_ctx": ctx}, config) == [("swapped_operands", "layers.0.attn_ctx")]


def test_causal_mask_missing_seen_in_the_context_alone():
    base = without_probs(reference())
    _, ctx = attend(base["layers.0.q_rope"], base["layers.0.k_rope"], base["layers.0.v"], scale=HEAD_DIM ** -0.5,
                    causal=False, **SHAPE)
    assert diagnoses(base, {**base, "layers.0.attn_ctx": ctx}) == [("causal_mask", "layers.0.attn_ctx")]


def test_each_query_seeing_only_itself_seen_in_the_context_alone():
    base = without_probs(reference())
    _, ctx = attend(base["layers.0.q_rope"], base["layers.0.k_rope"], base["layers.0.v"], scale=HEAD_DIM ** -0.5,
                    visible=np.eye(T, dtype=bool), **SHAPE)                  # a window of one key: its own
    assert diagnoses(base, {**base, "layers.0.attn_ctx": ctx}) == [("sliding_window", "layers.0.attn_ctx")]


def test_no_attention_cause_for_a_context_of_other_values():
    base = without_probs(reference())
    _, ctx = attend(base["layers.0.q_rope"], base["layers.0.k_rope"], R.standard_normal((T, KV_HEADS * HEAD_DIM)),
                    scale=HEAD_DIM ** -0.5, **SHAPE)
    assert causes(base, {**base, "layers.0.attn_ctx": ctx}) == set()


def test_a_note_says_how_to_record_probabilities_a_fused_kernel_hides():
    from parity.core.compare import compare
    from parity.core.trace import make_trace
    from parity.diagnose import diagnose

    base = reference()
    reference_trace = make_trace(base, {"dtype": "float32", "config": CONFIG})
    candidate_trace = make_trace(without_probs(base), {"dtype": "float32", "producer": "torch:port.Model"})
    comparison = diagnose(compare(reference_trace, candidate_trace), reference_trace, candidate_trace)
    assert any("Probe" in note and "layers.0.attn_probs" in note for note in comparison.notes)


def test_scale_applied_after_the_softmax_seen_in_the_context_alone():
    base = without_probs(reference())
    _, unscaled = attend(base["layers.0.q_rope"], base["layers.0.k_rope"], base["layers.0.v"], scale=1.0, **SHAPE)
    candidate = {**base, "layers.0.attn_ctx": HEAD_DIM ** -0.5 * unscaled}   # softmax(q k^T) * scale, then @ v
    assert diagnoses(base, candidate) == [("attention_scale", "layers.0.attn_ctx")]
