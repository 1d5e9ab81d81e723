import numpy as np

from parity.core.layout import alignments

RNG = np.random.default_rng(1)


def test_same_shape_is_taken_as_stored_and_nothing_else_is_tried():
    values = RNG.standard_normal((3, 3))
    found = list(alignments((3, 3), values))
    assert len(found) == 1 and found[0].describe() == "as stored"


def test_permuted_attention_probabilities_are_found():
    reference = RNG.random((4, 6, 6))                 # (H, T, S)
    candidate = reference.transpose(1, 0, 2).copy()   # (T, H, S)
    matches = [a for a in alignments(reference.shape, candidate) if np.array_equal(a.candidate, reference)]
    assert len(matches) == 1 and matches[0].permutation == (1, 0, 2)
    assert matches[0].describe() == "axes permuted (1, 0, 2)"


def test_unflattened_heads_are_flattened():
    reference = RNG.standard_normal((5, 12))          # (T, H*hd)
    candidate = reference.reshape(5, 3, 4)            # (T, H, hd)
    matches = [a for a in alignments(reference.shape, candidate) if np.array_equal(a.candidate, reference)]
    assert len(matches) == 1 and matches[0].describe() == "trailing axes flattened"


def test_head_major_layout_is_permuted_then_flattened():
    reference = RNG.standard_normal((5, 12))                       # (T, H*hd)
    candidate = reference.reshape(5, 3, 4).transpose(1, 0, 2)      # (H, T, hd)
    matches = [a for a in alignments(reference.shape, candidate) if np.array_equal(a.candidate, reference)]
    assert [m.describe() for m in matches] == ["axes permuted (1, 0, 2) then trailing axes flattened"]


def test_axes_of_size_one_are_ignored():
    reference = RNG.standard_normal((1, 8))
    found = list(alignments((1, 8), reference.reshape(8)))
    assert len(found) == 1 and np.array_equal(found[0].candidate, reference)
    assert found[0].describe() == "axes of size 1 dropped"


def test_different_sizes_cannot_be_aligned():
    assert list(alignments((4, 8), RNG.standard_normal((4, 9)))) == []
