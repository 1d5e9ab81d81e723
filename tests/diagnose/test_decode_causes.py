"""Decode-path causes named from one step's tensors against the full pass, on constructed examples."""

import numpy as np

from parity.core.decode_location import first_checkpoint
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
