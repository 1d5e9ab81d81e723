"""q and k kept in the interleaved RoPE layout (pairs): found from layer 0, read in the reference's order
(the convention rope_pairs)."""

import numpy as np

from parity.core.compare import compare
from parity.core.conventions import adapt, as_stored
from parity.core.rope_layout import kept_in_pairs, rotated_head_dim, unpermute_qk
from parity.core.trace import make_trace

RNG = np.random.default_rng(5)
HEAD_DIM, HEADS, KV_HEADS, TOKENS = 8, 4, 2, 5
CONFIG = {"num_attention_heads": HEADS, "num_key_value_heads": KV_HEADS, "hidden_size": HEADS * HEAD_DIM}


def to_pairs(array: np.ndarray) -> np.ndarray:
    """(T, H*hd) in halves order -> pair order: the inverse of unpermute_qk."""
    per_head = array.reshape(array.shape[0], -1, 2, HEAD_DIM // 2)
    return per_head.swapaxes(-1, -2).reshape(array.shape[0], -1)


def reference_tensors():
    return {f"layers.{layer}.{kind}": RNG.standard_normal((TOKENS, width)).astype(np.float32)
            for layer in range(2)
            for kind, width in (("q", HEADS * HEAD_DIM), ("k", KV_HEADS * HEAD_DIM), ("v", KV_HEADS * HEAD_DIM),
                                ("attn_ctx", HEADS * HEAD_DIM))}


def traces(permuted=("q", "k")):
    tensors = reference_tensors()
    candidate = {name: to_pairs(tensor) if name.rsplit(".", 1)[1] in permuted else tensor.copy()
                 for name, tensor in tensors.items()}
    return make_trace(tensors, {"config": CONFIG}), make_trace(candidate)


def test_unpermute_undoes_the_pair_order():
    halves = RNG.standard_normal((3, HEADS * HEAD_DIM))
    np.testing.assert_array_equal(unpermute_qk(to_pairs(halves), HEAD_DIM), halves)


def pair_layout(reference, candidate, head_dim):
    return kept_in_pairs(reference, candidate.__getitem__, candidate.tensors, head_dim)


def test_q_and_k_both_in_pair_order_are_found_and_read_back():
    reference, candidate = traces()
    assert rotated_head_dim(reference) == HEAD_DIM
    assert pair_layout(reference, candidate, HEAD_DIM)
    view, adaptations = adapt(reference, candidate)
    np.testing.assert_array_equal(view["layers.1.k"], reference["layers.1.k"])
    np.testing.assert_array_equal(view["layers.1.attn_ctx"], candidate["layers.1.attn_ctx"])   # not per-head q/k
    assert [a.convention for a in adaptations] == ["rope_pairs"]
    assert set(adaptations[0].names) == {f"layers.{layer}.{kind}" for layer in range(2) for kind in ("q", "k")}


def test_a_pair_order_port_passes_with_a_note_and_strict_compares_as_stored():
    reference, candidate = traces()
    view, adaptations = adapt(reference, candidate)
    assert compare(reference, view).verdict == "pass"
    assert "interleaved RoPE layout" in adaptations[0].note and "--strict rope_pairs" in adaptations[0].note
    held, adaptations = adapt(reference, candidate, strict=frozenset({"rope_pairs"}))
    assert adaptations[0].held
    assert compare(reference, held).first_divergence.checkpoint == "layers.0.q"


def test_q_and_k_stored_per_head_and_in_pairs_are_read_through_both_conventions():
    reference, candidate = traces()
    per_head = {name: (tensor.reshape(TOKENS, -1, HEAD_DIM).transpose(1, 0, 2).copy()
                       if name.rsplit(".", 1)[1] in ("q", "k") else tensor)
                for name, tensor in candidate.tensors.items()}   # (H, T, hd), as a port's attention holds them
    view, adaptations = adapt(reference, make_trace(per_head, {"config": CONFIG}))
    assert sorted(a.convention for a in adaptations) == ["layout", "rope_pairs"]
    np.testing.assert_array_equal(view["layers.0.q"], reference["layers.0.q"])


def test_the_references_q_is_laid_out_in_pairs_and_per_head_as_the_candidate_stores_it():
    reference, candidate = traces()
    per_head = {name: (tensor.reshape(TOKENS, -1, HEAD_DIM).transpose(1, 0, 2).copy()
                       if name.endswith(".q") else tensor) for name, tensor in candidate.tensors.items()}
    stored = make_trace(per_head, {"config": CONFIG})
    view, _ = adapt(reference, stored)
    np.testing.assert_array_equal(as_stored(view, "layers.1.q", reference["layers.1.q"]), stored["layers.1.q"])
    np.testing.assert_array_equal(as_stored(view, "layers.1.k", reference["layers.1.k"]), stored["layers.1.k"])


def test_q_alone_in_pair_order_is_a_bug_compared_as_stored():
    reference, candidate = traces(permuted=("q",))
    assert not pair_layout(reference, candidate, HEAD_DIM)
    view, adaptations = adapt(reference, candidate)
    assert adaptations == ()
    assert compare(reference, view).first_divergence.checkpoint == "layers.0.q"


def test_a_q_in_halves_order_is_not_taken_for_pairs():
    reference, candidate = traces(permuted=())
    assert not pair_layout(reference, candidate, HEAD_DIM)


def test_a_partial_rotary_reference_is_not_read_in_pairs():
    reference = make_trace(reference_tensors(), {"config": CONFIG,
                                                 "architecture": {"layers": [{"rotary_dim": HEAD_DIM // 2}]}})
    assert rotated_head_dim(reference) is None
