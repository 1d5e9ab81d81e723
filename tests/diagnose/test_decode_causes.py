"""Decode-path causes named from one step's tensors against the full pass, on constructed examples."""

import numpy as np

from parity.core.decode_location import PositionRows, first_checkpoint
from parity.core.names import in_flow_order
from parity.core.trace import make_trace
from parity.diagnose.attention import apply_rope
from parity.diagnose.context import ModelConfig
from parity.diagnose.decode_causes import diagnose_decode

RNG = np.random.default_rng(7)
POSITION, HEAD_DIM, THETA = 6, 8, 10000.0                # decoding position 6 after a 6-token prefill
K = RNG.standard_normal((POSITION + 1, 2 * HEAD_DIM))    # keys before RoPE, (T, Hkv * hd)
K_ROPE = apply_rope(K, HEAD_DIM, THETA, np.arange(POSITION + 1), "half")
FULL = make_trace({"layers.0.k": K, "layers.0.k_rope": K_ROPE,
                   "layers.0.attn_probs": np.full((4, POSITION + 1, POSITION + 1), 1 / (POSITION + 1))})
CONFIG = ModelConfig(heads=4, kv_heads=2, head_dim=HEAD_DIM, rope_theta=THETA)


def causes(step, name="layers.0.k_rope"):
    return [(d.cause, d.checkpoint) for d in diagnose_decode(FULL, step, POSITION, name, CONFIG)]


def test_keys_read_from_a_cache_written_one_slot_late():
    late = K_ROPE.copy()
    late[POSITION] = 0.0                                  # this step's key is not where it is read
    step = {"layers.0.k": K[POSITION:], "layers.0.k_rope": late}
    assert first_checkpoint(FULL, step, POSITION, 1e-6) == "layers.0.k_rope"
    assert causes(step) == [("kv_cache_offset", "layers.0.k_rope")]
    shifted = K_ROPE.copy()
    shifted[POSITION - 2:] = K_ROPE[POSITION - 3:-1]      # a later step: each key one slot late
    shifted[POSITION - 3] = 0.0
    assert causes({"layers.0.k_rope": shifted}) == [("kv_cache_offset", "layers.0.k_rope")]


def test_cached_keys_read_before_rope():
    unrotated = K_ROPE.copy()
    unrotated[:POSITION] = K[:POSITION]
    assert causes({"layers.0.k_rope": unrotated}) == [("decode_rope", "layers.0.k_rope")]


def test_a_layer_that_attends_over_its_own_key_alone_does_not_read_its_cache():
    step = {"layers.0.attn_probs": np.ones((4, 1, 1))}
    assert first_checkpoint(FULL, step, POSITION, 1e-6) == "layers.0.attn_probs"
    assert causes(step, "layers.0.attn_probs") == [("kv_cache_unread", "layers.0.attn_probs")]
    grown = {"layers.0.attn_probs": np.full((4, 1, POSITION + 2), 1 / (POSITION + 2))}
    assert causes(grown, "layers.0.attn_probs") == [("kv_cache_offset", "layers.0.attn_probs")]


def test_keys_read_right_and_other_errors_name_no_decode_cause():
    assert first_checkpoint(FULL, {"layers.0.k_rope": K_ROPE.copy()}, POSITION, 1e-6) is None
    assert causes({"layers.0.k_rope": K_ROPE * 1.5}) == []   # wrong everywhere: not a cache slot


# A port whose cache lives in its modules records its query, keys and values before RoPE, laid out in pairs,
# and its attention output; neither the keys a step read nor its probabilities.
Q = RNG.standard_normal((POSITION + 1, 4 * HEAD_DIM))     # (T, H * hd)
V = RNG.standard_normal((POSITION + 1, 2 * HEAD_DIM))     # (T, Hkv * hd)


def context(keys_rope, values, query_rope):
    """softmax(q k^T / sqrt(hd)) v of one query, head h reading KV head h // 2: (1, H * hd)."""
    heads = query_rope.reshape(4, HEAD_DIM)
    out = []
    for h in range(4):
        keys = keys_rope.reshape(-1, 2, HEAD_DIM)[:, h // 2]
        scores = keys @ heads[h] / np.sqrt(HEAD_DIM)
        weights = np.exp(scores - scores.max())
        out.append(weights / weights.sum() @ values.reshape(-1, 2, HEAD_DIM)[:, h // 2])
    return np.concatenate(out)[None]


def module_held(layout="adjacent"):
    """(the full pass's trace, the query of the step at POSITION, keys after RoPE) of such a port."""
    q_rope = apply_rope(Q, HEAD_DIM, THETA, np.arange(POSITION + 1), layout)
    k_rope = apply_rope(K, HEAD_DIM, THETA, np.arange(POSITION + 1), layout)
    outputs = np.concatenate([context(k_rope[: t + 1], V[: t + 1], q_rope[t]) for t in range(POSITION + 1)])
    full = make_trace({"layers.0.q": Q, "layers.0.k": K, "layers.0.v": V, "layers.0.attn_ctx": outputs})
    return full, q_rope[POSITION], k_rope


def test_a_module_held_cache_written_one_slot_past_is_named_from_the_attention_output():
    """The Meta-style port's planted bug: its module keeps the full pass's keys, each decoding step writes its key
    and value one slot past its position, so step 2 reads the key of the position before at its own slot."""
    full, query, k_rope = module_held()
    stale_keys, stale_values = k_rope.copy(), V.copy()
    stale_keys[POSITION], stale_values[POSITION] = k_rope[POSITION - 1], V[POSITION - 1]
    step = {"layers.0.q": Q[POSITION:], "layers.0.k": K[POSITION:], "layers.0.v": V[POSITION:],
            "layers.0.attn_ctx": context(stale_keys, stale_values, query)}
    assert first_checkpoint(full, step, POSITION, 1e-6) == "layers.0.attn_ctx"
    found = diagnose_decode(full, step, POSITION, "layers.0.attn_ctx", CONFIG)
    assert [(d.cause, d.checkpoint) for d in found] == [("kv_cache_offset", "layers.0.attn_ctx")]
    assert f"the key and value of position {POSITION - 1} twice" in found[0].message


def test_the_same_is_named_from_a_pass_judged_as_it_is_made():
    """After a long prompt the full pass is not held (core/decode_location.PositionRows): the layer that parts
    keeps its keys, values and attention output's row, enough for the same diagnosis."""
    full, query, k_rope = module_held()
    stale_keys, stale_values = k_rope.copy(), V.copy()
    stale_keys[POSITION], stale_values[POSITION] = k_rope[POSITION - 1], V[POSITION - 1]
    step = {"layers.0.q": Q[POSITION:], "layers.0.k": K[POSITION:], "layers.0.v": V[POSITION:],
            "layers.0.attn_ctx": context(stale_keys, stale_values, query)}
    rows = PositionRows(step, POSITION, 1e-6)
    for name in in_flow_order(full.tensors):
        for start in range(0, POSITION + 1, 3):          # blocks of 3 rows, as a long pass hands them over
            rows.put(name, full[name][start:start + 3], start)
    assert rows.first_checkpoint() == "layers.0.attn_ctx"
    found = diagnose_decode(rows, step, POSITION, "layers.0.attn_ctx", CONFIG)
    assert [d.cause for d in found] == ["kv_cache_offset"]


def test_a_step_that_never_writes_its_key_is_named_in_either_rope_layout():
    for layout in ("half", "adjacent"):
        full, query, k_rope = module_held(layout)
        zeroed_keys, zeroed_values = k_rope.copy(), V.copy()
        zeroed_keys[POSITION], zeroed_values[POSITION] = 0.0, 0.0
        step = {"layers.0.q": Q[POSITION:], "layers.0.attn_ctx": context(zeroed_keys, zeroed_values, query)}
        found = diagnose_decode(full, step, POSITION, "layers.0.attn_ctx", CONFIG)
        assert [d.cause for d in found] == ["kv_cache_offset"] and "zeros where this step's key" in found[0].message


def test_an_attention_output_wrong_another_way_names_no_cache_slot():
    full, query, k_rope = module_held()
    right = context(k_rope, V, query)
    for wrong in (right * 1.5, context(k_rope, V * 0.5, query)):
        step = {"layers.0.q": Q[POSITION:], "layers.0.attn_ctx": wrong}
        assert diagnose_decode(full, step, POSITION, "layers.0.attn_ctx", CONFIG) == []
    unreproduced = make_trace({**{name: full[name] for name in full.tensors},
                               "layers.0.attn_ctx": full["layers.0.attn_ctx"] * 2})
    stale_keys = k_rope.copy()
    stale_keys[POSITION] = k_rope[POSITION - 1]
    step = {"layers.0.q": Q[POSITION:], "layers.0.attn_ctx": context(stale_keys, V, query)}
    assert diagnose_decode(unreproduced, step, POSITION, "layers.0.attn_ctx", CONFIG) == []   # no model of it


def test_a_step_reading_its_cache_one_slot_short_is_named_from_the_attention_output():
    full, query, k_rope = module_held()
    step = {"layers.0.q": Q[POSITION:], "layers.0.attn_ctx": context(k_rope[:-1], V[:-1], query)}
    found = diagnose_decode(full, step, POSITION, "layers.0.attn_ctx", CONFIG)
    assert [d.cause for d in found] == ["kv_cache_offset"] and "own key and value are left out" in found[0].message


def test_a_value_alone_written_one_slot_past_is_told_from_key_and_value():
    full, query, k_rope = module_held()
    late = V.copy()
    late[POSITION] = V[POSITION - 1]
    step = {"layers.0.q": Q[POSITION:], "layers.0.attn_ctx": context(k_rope, late, query)}
    found = diagnose_decode(full, step, POSITION, "layers.0.attn_ctx", CONFIG)
    assert [d.cause for d in found] == ["kv_cache_offset"] and "its keys right" in found[0].message


def test_cached_keys_taken_before_rope_are_named_from_the_attention_output():
    full, query, k_rope = module_held()
    unrotated = K.copy()
    unrotated[POSITION] = k_rope[POSITION]                # the step rotates its own key, not the cached ones
    step = {"layers.0.q": Q[POSITION:], "layers.0.attn_ctx": context(unrotated, V, query)}
    found = diagnose_decode(full, step, POSITION, "layers.0.attn_ctx", CONFIG)
    assert [d.cause for d in found] == ["decode_rope"] and "before RoPE" in found[0].message


def test_a_step_parting_first_at_an_op_that_quantizes_its_input_is_named_so():
    from parity.diagnose.decode_causes import CAUSES, rounded_input

    per_call = "its inputs quantized to uint8 per tensor, a scale per call (onnxruntime's dynamic quantization)"
    [found] = rounded_input("layers.0.q", 9, per_call)
    assert found.cause == "decode_quantization" and found.cause in CAUSES and per_call in found.message
    assert "decoding position 9: layers.0.q is the first checkpoint that parts" in found.message
    assert "the grid its own tokens set" in found.message
    [found] = rounded_input("layers.3.mlp_out", 5, "its inputs quantized to int8 per block of 32")
    assert "a whole step apart" in found.message and "its own tokens" not in found.message
    assert rounded_input("layers.0.q", 9, None) == [] and rounded_input(None, 9, per_call) == []
