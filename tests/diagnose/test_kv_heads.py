"""Query heads reading other KV heads than the reference's, seen in attn_ctx alone (kv_heads.py)."""

import numpy as np

from detector_cases import CONFIG, causes, diagnoses, rng
from parity.diagnose.attention_math import attend, expanded_heads
from parity.diagnose.kv_heads import expansions

R = rng(11)
T, HEADS, KV_HEADS, HEAD_DIM = 9, 4, 2, 8
INTERLEAVED, TILED = expansions(HEADS, KV_HEADS)["interleaved"], expansions(HEADS, KV_HEADS)["tiled"]


def reference(kv_heads: int = KV_HEADS):
    """q, k (after RoPE), v and context of one layer, attention peaked as a trained model's; no probabilities."""
    q, k = 1.5 * R.standard_normal((T, HEADS * HEAD_DIM)), 1.5 * R.standard_normal((T, kv_heads * HEAD_DIM))
    v = R.standard_normal((T, kv_heads * HEAD_DIM))
    _, ctx = attend(q, k, v, scale=HEAD_DIM ** -0.5, heads=HEADS, kv_heads=kv_heads, head_dim=HEAD_DIM)
    return {"layers.0.q_rope": q, "layers.0.k_rope": k, "layers.0.v": v, "layers.0.attn_ctx": ctx}


def context_reading(base, keys, values, kv_heads: int = KV_HEADS):
    """attn_ctx with query head h reading the keys of KV head keys[h] and the values of values[h]."""
    k, v = (expanded_heads(base[name], kv_heads, HEAD_DIM, reads) for name, reads in
            (("layers.0.k_rope", keys), ("layers.0.v", values)))
    _, ctx = attend(base["layers.0.q_rope"], k, v, scale=HEAD_DIM ** -0.5, heads=HEADS, kv_heads=HEADS,
                    head_dim=HEAD_DIM)
    return ctx


def test_the_two_expansions():
    assert INTERLEAVED == [0, 0, 1, 1] and TILED == [0, 1, 0, 1]


def test_keys_expanded_tiled_are_named_from_the_context():
    base = reference()
    found = diagnoses(base, {**base, "layers.0.attn_ctx": context_reading(base, TILED, INTERLEAVED)})
    assert found == [("gqa_head_mapping", "layers.0.attn_ctx")]


def test_values_alone_and_both_sides_expanded_tiled():
    base = reference()
    for keys, values in ((INTERLEAVED, TILED), (TILED, TILED)):
        found = diagnoses(base, {**base, "layers.0.attn_ctx": context_reading(base, keys, values)})
        assert found == [("gqa_head_mapping", "layers.0.attn_ctx")], (keys, values)


def test_keys_heads_reordered_are_a_layout():
    config = {**CONFIG, "num_key_value_heads": HEADS}
    base = reference(kv_heads=HEADS)
    reversed_keys = [3, 2, 1, 0]
    candidate = {**base, "layers.0.attn_ctx": context_reading(base, reversed_keys, [0, 1, 2, 3], kv_heads=HEADS)}
    assert diagnoses(base, candidate, config) == [("layout_permuted", "layers.0.attn_ctx")]


def test_output_heads_reordered_are_not_a_kv_mapping():
    base = reference()
    ctx = base["layers.0.attn_ctx"].reshape(T, HEADS, HEAD_DIM)[:, ::-1].reshape(T, -1)   # merged in reverse order
    assert causes(base, {**base, "layers.0.attn_ctx": ctx}) == {"layout_permuted"}


def test_a_context_of_other_values_names_no_head_mapping():
    base = reference()
    other = base["layers.0.attn_ctx"] + 0.3 * R.standard_normal(base["layers.0.attn_ctx"].shape)
    assert not causes(base, {**base, "layers.0.attn_ctx": other}) & {"gqa_head_mapping", "layout_permuted"}


def test_recorded_probabilities_leave_it_to_the_probabilities():
    base = reference()
    probs, ctx = attend(base["layers.0.q_rope"], expanded_heads(base["layers.0.k_rope"], KV_HEADS, HEAD_DIM, TILED),
                        expanded_heads(base["layers.0.v"], KV_HEADS, HEAD_DIM, TILED), scale=HEAD_DIM ** -0.5,
                        heads=HEADS, kv_heads=HEADS, head_dim=HEAD_DIM)
    reference_probs, _ = attend(base["layers.0.q_rope"], base["layers.0.k_rope"], base["layers.0.v"],
                                scale=HEAD_DIM ** -0.5, heads=HEADS, kv_heads=KV_HEADS, head_dim=HEAD_DIM)
    found = diagnoses({**base, "layers.0.attn_probs": reference_probs},
                      {**base, "layers.0.attn_probs": probs, "layers.0.attn_ctx": ctx})
    assert found == [("gqa_head_mapping", "layers.0.attn_probs")]
