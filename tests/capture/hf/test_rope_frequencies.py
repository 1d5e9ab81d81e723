"""The float32 calibration's emulation of RoPE frequencies rounded a port's way: each moved by about
u * sqrt(1/3 + ln(f)^2) of itself, the same way in every run, and put back after."""

import math

import pytest

torch = pytest.importorskip("torch")

from parity.capture.hf.rope_frequencies import UNIT_ROUNDOFF, rounded_frequencies  # noqa: E402


class Rotary(torch.nn.Module):
    def __init__(self, dim=4096, base=100000.0):
        super().__init__()
        self.register_buffer("inv_freq", 1.0 / base ** (torch.arange(0, dim, 2).float() / dim), persistent=False)


def test_each_frequency_moves_by_its_exponents_rounding_and_is_put_back():
    rotary = Rotary()
    kept = rotary.inv_freq.clone()
    with rounded_frequencies(rotary):
        moved = rotary.inv_freq.clone()
        assert "inv_freq" in dict(rotary.named_buffers())
    relative = (moved.double() - kept.double()) / kept.double()
    spread = UNIT_ROUNDOFF * torch.sqrt(1 / 3 + torch.log(kept.double()) ** 2)
    assert 0.8 < (relative / spread).std().item() < 1.2
    assert relative.abs().max().item() < 6 * UNIT_ROUNDOFF * math.log(100000.0)
    assert torch.equal(rotary.inv_freq, kept)


def test_the_same_run_moves_them_the_same_way():
    rotary = Rotary(dim=64)
    with rounded_frequencies(rotary):
        first = rotary.inv_freq.clone()
    with rounded_frequencies(rotary):
        second = rotary.inv_freq.clone()
    assert torch.equal(first, second) and not torch.equal(first, rotary.inv_freq)


def test_each_frequency_moves_by_its_whole_spread_so_one_draw_is_not_a_lucky_one():
    """q_rope's error is carried by a few frequencies: moved by normal draws, one seed's calibration noise was half
    the expected (mlx-lm's correct Llama then failed at 2,048 tokens); each moves by its spread, signs random."""
    rotary = Rotary()
    kept = rotary.inv_freq.double()
    with rounded_frequencies(rotary):
        relative = (rotary.inv_freq.double() - kept) / kept
    spread = UNIT_ROUNDOFF * torch.sqrt(1 / 3 + torch.log(kept) ** 2)
    resolved = torch.log(kept) < -4            # moves many ulps wide: float32 keeps their size
    ratio = (relative / spread)[resolved].abs()
    assert 0.9 < ratio.median().item() < 1.1 and ratio.min().item() > 0.8
    signs = torch.sign(relative[resolved])
    assert 0.3 < (signs > 0).double().mean().item() < 0.7


def test_a_frequency_buffer_per_kind_of_layer_is_moved_too():
    """Gemma 3 (and the models built like it) keep one buffer per kind of layer and no `inv_freq`: each is moved,
    the `original_` copies dynamic RoPE restores from are left, and all are put back."""
    tiny_models = pytest.importorskip("tiny_models")
    pytest.importorskip("transformers")
    rotary = tiny_models.build("gemma3").model.rotary_emb
    kept = {name: buffer.clone() for name, buffer in rotary.named_buffers()}
    assert "inv_freq" not in kept and {"sliding_attention_inv_freq", "full_attention_inv_freq"} <= set(kept)
    with rounded_frequencies(rotary):
        now = dict(rotary.named_buffers())
        moved = {name for name in kept if not torch.equal(now[name], kept[name])}
    assert moved == {"sliding_attention_inv_freq", "full_attention_inv_freq"}
    assert all(torch.equal(buffer, kept[name]) for name, buffer in rotary.named_buffers())
