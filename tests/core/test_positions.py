import numpy as np

from parity.core.positions import layer_position_matrix, per_head_rel_l2, position_profile
from parity.core.trace import make_trace

RNG = np.random.default_rng(7)


def test_per_head_error_of_attention_probabilities_and_projections():
    reference = {"layers.0.attn_probs": RNG.random((4, 3, 3)), "layers.0.q": RNG.standard_normal((3, 8)),
                 "layers.0.k": RNG.standard_normal((3, 4))}
    candidate = {name: value.copy() for name, value in reference.items()}
    candidate["layers.0.attn_probs"][2] *= 1.5
    candidate["layers.0.k"][:, 2:] *= -1            # the second of 2 KV heads (head_dim 2)
    reference_trace, candidate_trace = make_trace(reference), make_trace(candidate)
    assert [h > 0 for h in per_head_rel_l2("layers.0.attn_probs", reference_trace, candidate_trace)] == [False, False, True, False]
    assert [h > 0 for h in per_head_rel_l2("layers.0.k", reference_trace, candidate_trace)] == [False, True]
    assert len(per_head_rel_l2("layers.0.q", reference_trace, candidate_trace)) == 4


def test_position_profile_and_layer_matrix():
    reference = {f"layers.{i}.out": RNG.standard_normal((5, 6)) for i in range(3)}
    candidate = {name: value.copy() for name, value in reference.items()}
    candidate["layers.1.out"][4] += 1.0
    reference_trace, candidate_trace = make_trace(reference), make_trace(candidate)
    profile = position_profile("layers.1.out", reference_trace, candidate_trace)
    assert len(profile) == 5 and profile[4] > 0 and max(profile[:4]) == 0
    matrix = layer_position_matrix(reference_trace, candidate_trace)
    assert len(matrix) == 3 and matrix[1][4] > 0 and max(matrix[0]) == 0


def test_largest_differences_are_listed_largest_first_with_both_values():
    from parity.core.positions import WORST_ELEMENTS, largest_differences
    from parity.core.trace import make_trace

    reference = np.zeros((3, 4))
    candidate = reference.copy()
    candidate[2, 1], candidate[0, 3], candidate[1, 0] = 5.0, -7.0, 0.5
    candidate[1, 1] = np.nan
    found = largest_differences("layers.0.out", make_trace({"layers.0.out": reference}),
                                make_trace({"layers.0.out": candidate}))
    assert len(found) == WORST_ELEMENTS
    (first, _, c0, d0), second, third = found[:3]
    assert first == (1, 1) and np.isnan(c0) and d0 == np.inf    # a NaN facing a number: infinitely far
    assert second == ((0, 3), 0.0, -7.0, 7.0) and third == ((2, 1), 0.0, 5.0, 5.0)   # exact: differences of 0.0
    assert found[3] == ((1, 0), 0.0, 0.5, 0.5) and found[4][3] == 0.0
    assert largest_differences("layers.0.out", make_trace({"layers.0.out": reference}),
                               make_trace({"layers.0.out": candidate[:2]})) == ()   # shapes differ: not aligned here


def test_largest_differences_read_in_chunks_find_what_one_pass_finds(monkeypatch):
    import parity.core.positions as positions

    rng = np.random.default_rng(3)
    reference = rng.standard_normal((37, 11)).astype(np.float32)
    candidate = reference + np.float32(1e-3) * rng.standard_normal((37, 11)).astype(np.float32)
    candidate[30, 2] = np.nan          # a NaN facing a number: infinitely different
    reference[5, 5] = candidate[5, 5] = np.nan   # NaN facing NaN: the same
    candidate[12, 7] += 5.0
    candidate[20, 1] += 5.0
    traces = make_trace({"layers.0.out": reference}), make_trace({"layers.0.out": candidate})
    whole = positions.largest_differences("layers.0.out", *traces, count=6)
    monkeypatch.setattr(positions, "_CHUNK_ELEMENTS", 16)   # 26 chunks
    assert repr(positions.largest_differences("layers.0.out", *traces, count=6)) == repr(whole)  # NaN values too
    assert whole[0][0] == (30, 2) and whole[0][3] == float("inf")
    assert {whole[1][0], whole[2][0]} == {(12, 7), (20, 1)}
    assert all(entry[0] != (5, 5) for entry in whole)
    differences = [entry[3] for entry in whole]
    assert differences == sorted(differences, reverse=True)
