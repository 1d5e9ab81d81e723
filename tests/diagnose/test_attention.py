import numpy as np

from detector_cases import CONFIG, causes, diagnoses, rng
from parity.diagnose.attention import apply_rope, attention_probabilities

R = rng(2)
T, HEADS, KV_HEADS, HEAD_DIM = 7, 4, 2, 8


def reference():
    q, k = R.standard_normal((T, HEADS * HEAD_DIM)), R.standard_normal((T, KV_HEADS * HEAD_DIM))
    positions = np.arange(T)
    q_rope, k_rope = (apply_rope(x, HEAD_DIM, 10000.0, positions, "half") for x in (q, k))
    probs = attention_probabilities(q_rope, k_rope, HEADS, KV_HEADS, HEAD_DIM, lambda h: h // 2)
    return {"layers.0.q": q, "layers.0.k": k, "layers.0.q_rope": q_rope, "layers.0.k_rope": k_rope,
            "layers.0.attn_probs": probs}


def test_rope_layout_adjacent_pairs():
    base = reference()
    candidate = {**base, "layers.0.q_rope": apply_rope(base["layers.0.q"], HEAD_DIM, 10000.0, np.arange(T), "adjacent")}
    assert diagnoses(base, candidate) == [("rope_layout", "layers.0.q_rope")]


def test_rope_position_offset():
    base = reference()
    candidate = {**base, "layers.0.q_rope": apply_rope(base["layers.0.q"], HEAD_DIM, 10000.0, np.arange(T) + 2, "half")}
    assert diagnoses(base, candidate) == [("rope_position_offset", "layers.0.q_rope")]


def test_rope_detectors_need_the_rope_theta():
    base = reference()
    candidate = {**base, "layers.0.q_rope": apply_rope(base["layers.0.q"], HEAD_DIM, 10000.0, np.arange(T), "adjacent")}
    config = {key: value for key, value in CONFIG.items() if key != "rope_parameters"} | {"model_type": "gpt2"}
    assert not causes(base, candidate, config) & {"rope_layout", "rope_position_offset"}


def test_gqa_head_mapping_tiled():
    base = reference()
    tiled = attention_probabilities(base["layers.0.q_rope"], base["layers.0.k_rope"], HEADS, KV_HEADS, HEAD_DIM, lambda h: h % 2)
    assert diagnoses(base, {**base, "layers.0.attn_probs": tiled}) == [("gqa_head_mapping", "layers.0.attn_probs")]


def test_causal_mask_missing():
    base = reference()
    q, k = base["layers.0.q_rope"].reshape(T, HEADS, HEAD_DIM), base["layers.0.k_rope"].reshape(T, KV_HEADS, HEAD_DIM)
    scores = np.stack([q[:, h] @ k[:, h // 2].T for h in range(HEADS)]) / np.sqrt(HEAD_DIM)
    unmasked = np.exp(scores - scores.max(-1, keepdims=True))
    unmasked /= unmasked.sum(-1, keepdims=True)
    assert diagnoses(base, {**base, "layers.0.attn_probs": unmasked}) == [("causal_mask", "layers.0.attn_probs")]


def test_no_attention_cause_for_probabilities_of_other_scores():
    base = reference()
    other = attention_probabilities(R.standard_normal((T, 32)), R.standard_normal((T, 16)), HEADS, KV_HEADS, HEAD_DIM, lambda h: h // 2)
    assert causes(base, {**base, "layers.0.attn_probs": other}) == set()
