"""Conventions that are not bugs, recognized, adapted before the comparison and noted once; --strict holds them."""

import numpy as np
import pytest

from parity.core.compare import CompareConfig, compare
from parity.core.conventions import adapt, as_stored
from parity.core.trace import make_trace

T, H, HD, V = 6, 4, 8, 20
RNG = np.random.default_rng(0)
Q = RNG.standard_normal((T, H * HD)).astype(np.float32)
PROBS = RNG.random((H, T, T)).astype(np.float32)
LOGITS = RNG.standard_normal((T, V)).astype(np.float32)
OUT = RNG.standard_normal((T, H * HD)).astype(np.float32)
REFERENCE = make_trace({"layers.0.q": Q, "layers.0.attn_probs": PROBS, "layers.0.out": OUT, "logits": LOGITS},
                       {"dtype": "float32", "config": {"num_attention_heads": H, "num_key_value_heads": H}})


def candidate(**tensors):
    return make_trace({"layers.0.q": Q, "layers.0.attn_probs": PROBS, "layers.0.out": OUT, "logits": LOGITS,
                       **tensors}, {"dtype": "float32"})


@pytest.mark.parametrize("stored, described", [
    (Q.reshape(T, H, HD), "[T, H, hd]"),
    (Q.reshape(T, H, HD).transpose(1, 0, 2).copy(), "[H, T, hd]"),
    (Q.reshape(1, T, H, HD), "[T, H, hd]"),
    (Q.reshape(T, H, HD).transpose(1, 0, 2)[None].copy(), "[H, T, hd]"),
])
def test_per_head_layouts_are_read_as_the_reference_holds_them(stored, described):
    adapted, adaptations = adapt(REFERENCE, candidate(**{"layers.0.q": stored}))
    np.testing.assert_array_equal(adapted["layers.0.q"], Q)
    assert [a.convention for a in adaptations] == ["layout"] and described in adaptations[0].note
    assert adapted.shape_of("layers.0.q") == Q.shape


@pytest.mark.parametrize("stored", [Q.reshape(T, H, HD).transpose(1, 0, 2).copy(), Q.reshape(1, T, H, HD)])
def test_a_value_in_the_references_form_is_laid_out_as_the_candidate_stores_it(stored):
    kept = candidate(**{"layers.0.q": stored})
    adapted, _ = adapt(REFERENCE, kept)
    doubled = as_stored(adapted, "layers.0.q", 2 * Q)
    assert doubled.shape == kept.shape_of("layers.0.q") != Q.shape
    np.testing.assert_array_equal(doubled, 2 * kept["layers.0.q"])
    np.testing.assert_array_equal(as_stored(adapted, "layers.0.out", OUT), OUT)   # not adapted: as it is


def test_an_adaptation_that_drops_or_changes_values_has_no_inverse():
    padded = np.concatenate([LOGITS, np.zeros((T, 3), np.float32)], axis=1)
    adapted, adaptations = adapt(REFERENCE, candidate(logits=padded))
    assert [a.convention for a in adaptations] == ["vocab_padding"]
    assert as_stored(adapted, "logits", LOGITS) is None


def test_probabilities_stored_query_first_are_read_head_first():
    adapted, adaptations = adapt(REFERENCE, candidate(**{"layers.0.attn_probs": PROBS.transpose(1, 0, 2).copy()}))
    np.testing.assert_array_equal(adapted["layers.0.attn_probs"], PROBS)
    assert "[T, H, S]" in adaptations[0].note


def test_a_padded_vocabulary_a_shifted_row_and_a_residual_pair_are_adapted():
    padded = np.concatenate([LOGITS, np.full((T, 12), -1e4, np.float32)], axis=1)
    adapted, adaptations = adapt(REFERENCE, candidate(logits=padded + np.arange(T, dtype=np.float32)[:, None],
                                                      **{"layers.0.out": np.stack([OUT - 1.0, np.ones_like(OUT)])}))
    np.testing.assert_allclose(adapted["logits"], LOGITS, atol=1e-5)
    np.testing.assert_allclose(adapted["layers.0.out"], OUT, atol=1e-6)
    assert {a.convention for a in adaptations} == {"vocab_padding", "logit_shift", "residual_pair"}
    assert compare(REFERENCE, adapted)


def test_a_bug_is_not_taken_for_a_convention():
    noisy = LOGITS + RNG.standard_normal(LOGITS.shape).astype(np.float32)       # not a constant per row
    adapted, adaptations = adapt(REFERENCE, candidate(logits=noisy))
    assert adaptations == () and adapted["logits"] is not None
    assert not compare(REFERENCE, adapted)


def test_as_many_heads_as_tokens_is_read_by_the_declared_layout():
    square = make_trace({"layers.0.q": RNG.standard_normal((H, H * HD)).astype(np.float32)},
                        {"config": {"num_attention_heads": H}})
    head_major = square["layers.0.q"].reshape(H, H, HD).transpose(1, 0, 2).copy()
    _, undecided = adapt(square, make_trace({"layers.0.q": head_major}))
    assert undecided == ()                                                     # the sizes do not tell
    adapted, declared = adapt(square, make_trace({"layers.0.q": head_major}, {"layouts": {"layers.*.q": "HTD"}}))
    np.testing.assert_array_equal(adapted["layers.0.q"], square["layers.0.q"])
    assert "declared" in declared[0].note


def test_strict_holds_a_convention_as_a_failure():
    stored = candidate(**{"layers.0.q": Q.reshape(T, H, HD)})
    adapted, adaptations = adapt(REFERENCE, stored, strict=frozenset({"layout"}))
    assert adapted is stored and adaptations[0].held and "--strict layout" in adaptations[0].note
    result = compare(REFERENCE, adapted, config=CompareConfig(align=False)).result("layers.0.q")
    assert result.failed and "shape mismatch" in result.reason


def test_long_shifted_logits_are_written_to_a_mapped_file_with_the_same_values(monkeypatch, tmp_path):
    """Past a size, the adapted logits are not held in memory: the same float64 values, mapped from a file."""
    import parity.core.conventions as conventions

    shifted = candidate(logits=LOGITS + np.arange(T, dtype=np.float32)[:, None])
    held, _ = adapt(REFERENCE, shifted)
    held_logits = held["logits"]                                   # adapted when read: read before the patch
    monkeypatch.setattr(conventions, "_SHIFTED_HELD_BYTES", 0)
    monkeypatch.setattr(conventions, "_SHIFT_CHUNK_ROWS", 4)       # more than one block of rows
    monkeypatch.setenv("PARITY_SPILL_DIR", str(tmp_path))
    mapped, adaptations = adapt(REFERENCE, shifted)
    assert isinstance(mapped["logits"], np.memmap) and not isinstance(held_logits, np.memmap)
    assert mapped["logits"].dtype == held_logits.dtype == np.float64
    np.testing.assert_array_equal(mapped["logits"], held_logits)
    assert [a.convention for a in adaptations] == ["logit_shift"]
    assert list(tmp_path.iterdir()) == []                            # unlinked: nothing left where it was written


def test_a_wrong_logits_row_that_moves_mostly_together_is_not_called_a_shift():
    # a bug upstream of the head moves each row mostly by a constant (here ~94% of the error's square), and
    # the rest is still the bug's
    moved = LOGITS + np.linspace(-1.5, 1.5, T, dtype=np.float32)[:, None]
    wrong = moved + np.float32(0.25) * RNG.standard_normal((T, V)).astype(np.float32)
    adapted, adaptations = adapt(REFERENCE, candidate(logits=wrong))
    assert adaptations == () and not compare(REFERENCE, adapted)
    rounded = moved + np.float32(1e-3) * RNG.standard_normal((T, V)).astype(np.float32)   # a convention, noisy
    assert [a.convention for a in adapt(REFERENCE, candidate(logits=rounded))[1]] == ["logit_shift"]
