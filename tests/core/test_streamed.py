"""Checkpoints measured a block of rows at a time (core/streamed.py): the same metrics, per-position errors and
verdict as the whole pair measured at once, whatever the blocks; rows missing or mis-shaped are said."""

from __future__ import annotations

import numpy as np
import pytest

from parity.core.calibrate import calibrated_tolerance, noise_floor
from parity.core.metrics import NORMS_ONLY, measure_pair
from parity.core.results import FAIL, NOT_COMPARABLE, PASS, NoiseFloor
from parity.core.streamed import StreamedCheckpoints

NAME = "layers.2.attn_probs"


class HeldRows:
    """The reference's rows from tensors in memory, `per_block` rows at a time."""

    def __init__(self, tensors: dict[str, np.ndarray], per_block: int = 3) -> None:
        self.tensors, self.per_block = tensors, per_block
        self.names = frozenset(tensors)
        self.asked: list[tuple[int, int]] = []

    def shape(self, name):
        return self.tensors[name].shape

    def rows(self, name, start, stop):
        self.asked.append((start, stop))
        return self.tensors[name][:, start:stop]

    def rows_per_block(self, name):
        return self.per_block


def pair(seed: int = 0, heads: int = 3, tokens: int = 17):
    rng = np.random.default_rng(seed)
    reference = rng.random((heads, tokens, tokens))
    candidate = (reference + rng.normal(0, 1e-6, reference.shape)).astype(np.float32)
    return reference, candidate


def streamed(reference, candidate, blocks, tolerance=NORMS_ONLY, per_block=3):
    stream = StreamedCheckpoints(HeldRows({NAME: reference}, per_block), lambda name: tolerance)
    for start, stop in blocks:
        stream.put(NAME, candidate[:, start:stop], start)
    return stream


@pytest.mark.parametrize("blocks", [[(0, 17)], [(0, 5), (5, 6), (6, 17)], [(12, 17), (0, 4), (4, 12)]])
def test_blocks_in_any_order_give_the_whole_pairs_metrics(blocks):
    reference, candidate = pair()
    whole = measure_pair(reference, candidate, NORMS_ONLY, token_axis=1)
    result, per_position = streamed(reference, candidate, blocks).results()[NAME]
    assert result.status == PASS
    for field in ("rel_l2", "cosine", "max_abs", "mean_abs", "max_rel", "position_rel_l2", "reference_rms"):
        assert getattr(result.metrics, field) == pytest.approx(getattr(whole.metrics, field), rel=1e-12), field
    assert result.metrics.worst_index == whole.metrics.worst_index
    assert result.metrics.worst_position == whole.metrics.worst_position
    np.testing.assert_allclose(per_position, whole.per_position, rtol=1e-12)


def test_the_reference_is_rebuilt_a_few_rows_at_a_time():
    reference, candidate = pair()
    stream = streamed(reference, candidate, [(0, 10), (10, 17)], per_block=4)
    assert stream.reference.asked == [(0, 4), (4, 8), (8, 10), (10, 14), (14, 17)]


def test_a_calibrated_tolerance_fails_a_wrong_block_and_names_its_position():
    reference, candidate = pair()
    noise = streamed(reference, candidate, [(0, 17)]).noise_floors()[NAME]
    held = noise_floor(NAME, reference, candidate)
    assert (noise.rel_l2, noise.position_rel_l2) == (held.rel_l2, held.position_rel_l2)
    assert noise.position_weighted_rel_l2 == pytest.approx(held.position_weighted_rel_l2, rel=1e-12)
    wrong = candidate.copy()
    wrong[:, 9] = np.roll(wrong[:, 9], 1, axis=-1)                      # position 9's keys shifted by one
    tolerance = calibrated_tolerance(noise, "float32")
    result, per_position = streamed(reference, wrong, [(0, 8), (8, 17)], tolerance).results()[NAME]
    assert result.status == FAIL and result.metrics.worst_position == 9
    assert int(np.argmax(per_position)) == 9
    assert streamed(reference, candidate, [(0, 8), (8, 17)], tolerance).results()[NAME][0].status == PASS


def test_a_nan_in_a_block_fails():
    reference, candidate = pair()
    candidate[1, 14, 3] = np.nan
    noise = NoiseFloor(1e-6, 1e-6)
    result, _ = streamed(reference, candidate, [(0, 12), (12, 17)], calibrated_tolerance(noise, "float32")).results()[NAME]
    assert result.status == FAIL and result.metrics.nan_candidate == 1


def test_rows_given_in_part_are_not_comparable():
    reference, candidate = pair()
    result, per_position = streamed(reference, candidate, [(0, 5), (9, 17)]).results()[NAME]
    assert result.status == NOT_COMPARABLE and per_position is None
    assert result.reason == "the rows were given in part: 13 of 17, the first missing at position 5"


def test_a_block_of_another_shape_fails_with_both_shapes():
    reference, _ = pair()
    stream = StreamedCheckpoints(HeldRows({NAME: reference}), lambda name: NORMS_ONLY)
    stream.put(NAME, np.zeros((2, 17, 17)), 0)
    result, _ = stream.results()[NAME]
    assert result.status == FAIL
    assert result.reason == "shape mismatch: reference [3, 17, 17], candidate [2, 17, 17] as its rows from 0"


def test_a_pass_that_begins_again_is_measured_once():
    """A forward run twice (a tensor changed in place after it was recorded) puts its rows twice."""
    reference, candidate = pair()
    once = streamed(reference, candidate, [(0, 9), (9, 17)]).results()[NAME][0]
    twice = streamed(reference, candidate, [(0, 9), (9, 17), (0, 9), (9, 17)]).results()[NAME][0]
    assert twice.metrics == once.metrics


def test_a_batch_of_one_is_the_traces_shape_and_what_was_never_given_is_missing():
    reference, candidate = pair()
    other = "layers.3.attn_probs"
    stream = StreamedCheckpoints(HeldRows({NAME: reference, other: reference}), lambda name: NORMS_ONLY)
    stream.put(NAME, candidate[None], 0)                                     # (1, H, T, S)
    assert stream.results()[NAME][0].status == PASS
    assert stream.missing() == {other}


def test_a_checkpoint_without_a_tolerance_known_before_its_rows_go_is_not_comparable():
    reference, candidate = pair()
    stream = StreamedCheckpoints(HeldRows({NAME: reference}), lambda name: None)
    stream.put(NAME, candidate, 0)
    result, _ = stream.results()[NAME]
    assert result.status == NOT_COMPARABLE and "no tolerance was known" in result.reason


def test_a_whole_tensor_in_another_layout_is_compared_in_its_best_alignment_as_a_stored_one_is():
    """A port that records its probabilities as [T, H, S]: aligned as compare() aligns a stored tensor."""
    reference, candidate = pair()
    result, _ = streamed(reference, candidate.transpose(1, 0, 2).copy(), [(0, 17)]).results()[NAME]
    assert result.status == PASS and result.layout is not None
    assert result.metrics.rel_l2 == pytest.approx(measure_pair(reference, candidate, NORMS_ONLY, token_axis=1)
                                                  .metrics.rel_l2, rel=1e-12)
