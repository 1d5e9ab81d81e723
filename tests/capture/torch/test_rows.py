"""A checkpoint a port's Probe is given a block of rows at a time is put together as the whole tensor, or the
port's mistake is named: a row given twice, a row never given, blocks of different shapes."""

import pytest

torch = pytest.importorskip("torch")

from parity.capture.torch.rows import RowBlocks  # noqa: E402
from parity.core.errors import CaptureError  # noqa: E402

PROBABILITIES = "layers.0.attn_probs"   # (H, T, S): its rows are axis 1
HIDDEN = "layers.0.out"                 # (T, D): axis 0


def test_blocks_given_out_of_order_are_joined_in_order_once_they_cover_every_row():
    whole = torch.randn(3, 7, 7)
    blocks = RowBlocks(token_count=7)
    assert blocks.add(PROBABILITIES, whole[:, 4:], 4) is None
    assert blocks.add(PROBABILITIES, whole[:, :2], 0) is None
    joined = blocks.add(PROBABILITIES, whole[:, 2:4], 2)
    assert torch.equal(joined, whole)
    assert blocks.finish() == {}


def test_without_a_token_count_the_blocks_are_joined_at_the_end_when_they_run_from_row_0():
    whole = torch.randn(5, 4)
    blocks = RowBlocks(token_count=None)
    assert blocks.add(HIDDEN, whole[3:], 3) is None
    assert blocks.add(HIDDEN, whole[:3], 0) is None
    assert torch.equal(blocks.finish()[HIDDEN], whole)


def test_a_row_given_twice_is_the_ports_mistake():
    blocks = RowBlocks(token_count=8)
    blocks.add(HIDDEN, torch.zeros(4, 2), 0)
    with pytest.raises(CaptureError, match=r"rows 2\.\.5 were given to its probe after rows 0\.\.3"):
        blocks.add(HIDDEN, torch.zeros(4, 2), 2)


@pytest.mark.parametrize("token_count, given, missing", [(8, [(0, 4)], 4), (8, [(0, 2), (4, 4)], 2),
                                                         (None, [(2, 3)], 0)])
def test_a_row_never_given_names_the_first_one_missing(token_count, given, missing):
    blocks = RowBlocks(token_count=token_count)
    for start, rows in given:
        blocks.add(HIDDEN, torch.zeros(rows, 2), start)
    with pytest.raises(CaptureError, match=rf"none from row {missing}; call it once per block"):
        blocks.finish()


def test_blocks_that_differ_in_more_than_their_rows_are_refused():
    blocks = RowBlocks(token_count=8)
    blocks.add(PROBABILITIES, torch.zeros(2, 4, 8), 0)
    with pytest.raises(CaptureError, match=r"blocks of shapes \[2, 4, 8\] and \[2, 4, 7\]"):
        blocks.add(PROBABILITIES, torch.zeros(2, 4, 7), 4)


@pytest.mark.parametrize("start", [-1, 1.5, "0"])
def test_a_start_that_is_not_a_row_position_is_refused(start):
    with pytest.raises(CaptureError, match="a Probe's start must be the first row's position"):
        RowBlocks(token_count=4).add(HIDDEN, torch.zeros(2, 2), start)
