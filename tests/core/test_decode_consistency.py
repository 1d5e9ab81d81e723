"""The KV cache against the reference's, and against the candidate's own pass where that pass already parts."""

import numpy as np

from parity.core.decode_consistency import compare_caches, parted_in_forward

RNG = np.random.default_rng(0)
S, HKV, HD = 5, 2, 4


def cache(layers: int = 2) -> dict:
    return {layer: (RNG.normal(size=(S, HKV, HD)), RNG.normal(size=(S, HKV, HD))) for layer in range(layers)}


def test_a_cache_equal_to_the_references_passes():
    reference = cache()
    result = compare_caches(reference, reference, 1e-6)
    assert result and not result.inherited and "matches the reference's" in result.verdict


def test_a_cache_apart_from_the_references_as_its_own_pass_is_inherited_not_a_mismatch():
    reference = cache()
    rounded = {layer: tuple(part * 1.01 for part in pair) for layer, pair in reference.items()}   # a quantized pass
    own = {(part, layer): rounded[layer][index] for layer in rounded for index, part in enumerate(("keys", "values"))}
    assert not compare_caches(reference, rounded, 1e-6)
    result = compare_caches(reference, rounded, 1e-6, own)
    assert result and result.inherited == (("keys", 0), ("values", 0), ("keys", 1), ("values", 1))
    assert "keys of layers 0-1 and values of layers 0-1 differ from the reference's as that pass's do" in \
        result.verdict


def test_a_cache_apart_from_its_own_pass_too_is_a_mismatch():
    reference = cache()
    rounded = {layer: tuple(part * 1.01 for part in pair) for layer, pair in reference.items()}
    own = {(part, layer): rounded[layer][index] for layer in rounded for index, part in enumerate(("keys", "values"))}
    broken = dict(rounded)
    keys, values = broken[1]
    broken[1] = (keys.copy(), values)
    broken[1][0][:, 1] = 0.0                       # layer 1's keys of head 1 not written
    result = compare_caches(reference, broken, 1e-6, own)
    assert not result and result.first == ("keys", 1, 1)
    assert ("keys", 0) in result.inherited and ("keys", 1) not in result.inherited


def test_a_layer_where_the_forward_pass_does_not_part_is_held_to_the_references():
    reference = cache()
    rounded = {layer: tuple(part * 1.01 for part in pair) for layer, pair in reference.items()}
    own = {("keys", 0): rounded[0][0], ("values", 0): rounded[0][1]}
    result = compare_caches(reference, rounded, 1e-6, own)
    assert not result and result.first == ("keys", 1, 0)


def test_a_layer_whose_own_pass_is_not_recorded_is_not_judged_and_says_so():
    reference = cache()
    rounded = {layer: tuple(part * 1.01 for part in pair) for layer, pair in reference.items()}
    own = {("keys", 0): None, ("values", 0): rounded[0][1], ("keys", 1): None, ("values", 1): rounded[1][1]}
    result = compare_caches(reference, rounded, 1e-6, own)
    assert result and result.unjudged == (("keys", 0), ("keys", 1)) and result.inherited == (("values", 0),
                                                                                           ("values", 1))
    assert "its keys of layers 0-1 differ from the reference's where the forward pass parts too" in result.verdict
    assert "not checked" in result.verdict and "keys of layers 0-1" in result.unjudged_reason


def test_the_forward_passs_failed_keys_and_values_name_the_cache_parts_they_write():
    failed = {"layers.0.k_rope", "layers.2.k", "layers.1.v", "layers.1.q", "embed", "logits"}
    assert parted_in_forward(failed) == {("keys", 0), ("keys", 2), ("values", 1)}
