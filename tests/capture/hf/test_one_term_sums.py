"""The float32 calibration's emulation of sums taken one term at a time: each projection's output moved by
about u * sqrt(K / 6) of itself, the same way in every run, and nothing moved once it ends."""

import math

import pytest

torch = pytest.importorskip("torch")

from parity.capture.hf.one_term_sums import UNIT_ROUNDOFF, one_term_sums  # noqa: E402


def model(width=1536):
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(width, 512, bias=False))


def test_each_projection_is_moved_by_the_rounding_of_a_one_term_sum():
    net, x = model(), torch.randn(64, 1536)
    plain = net(x)
    with one_term_sums(net):
        moved = net(x)
    relative = ((moved.double() - plain.double()) / plain.double()).std().item()
    expected = UNIT_ROUNDOFF / math.sqrt(3) * math.sqrt(1536 / 2)              # 1.0e-6
    assert 0.8 * expected < relative < 1.2 * expected


def test_the_same_run_is_moved_the_same_way_and_the_hooks_go_after():
    net, x = model(), torch.randn(8, 1536)
    with one_term_sums(net):
        first = net(x)
    with one_term_sums(net):
        second = net(x)
    assert torch.equal(first, second) and not torch.equal(first, net(x))
    assert not net[0]._forward_hooks
