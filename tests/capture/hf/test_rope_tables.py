"""RoPE's tables computed in float64 while `float64_tables` is active: transformers' rotary modules compute them in
float32 even in a float64 model; the float64 calibration widens them, and puts the module back after."""

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from parity.capture.hf.rope_tables import float64_tables  # noqa: E402

import tiny_models  # noqa: E402


def exact_tables(rotary, positions):
    angles = positions.double()[:, None] * rotary.inv_freq.double()[None, :]     # [T, hd/2]
    table = torch.cat((angles, angles), dim=-1)
    return table.cos(), table.sin()


def test_the_tables_are_float64_while_active_and_float32_after():
    model = tiny_models.build("llama").to(torch.float64)
    rotary = model.model.rotary_emb
    positions = torch.arange(4096)
    x = torch.zeros(1, 4096, 8, dtype=torch.float64)
    cos_exact, sin_exact = exact_tables(rotary, positions)
    narrowing = torch.Tensor.float, torch.Tensor.to
    with float64_tables(model):
        cos, sin = rotary(x, positions[None])
    assert cos.dtype == torch.float64 and (cos[0] - cos_exact).abs().max().item() < 1e-12
    assert (sin[0] - sin_exact).abs().max().item() < 1e-12
    assert "forward" not in vars(rotary) and (torch.Tensor.float, torch.Tensor.to) == narrowing
    cos, _ = rotary(x, positions[None])                           # transformers' own again: float32's rounding
    assert (cos[0] - cos_exact).abs().max().item() > 1e-6
    assert torch.ones(2).double().float().dtype == torch.float32


def test_a_rotary_with_one_table_per_kind_of_layer_is_widened_too():
    """Gemma 3's rotary holds `sliding_attention_inv_freq` and `full_attention_inv_freq`, no `inv_freq`."""
    model = tiny_models.build("gemma3").to(torch.float64)
    rotary = model.model.rotary_emb
    positions = torch.arange(4096)
    x = torch.zeros(1, 4096, 8, dtype=torch.float64)
    for kind in ("sliding_attention", "full_attention"):
        angles = positions.double()[:, None] * getattr(rotary, f"{kind}_inv_freq").double()[None, :]
        cos_exact = torch.cat((angles, angles), dim=-1).cos()
        with float64_tables(model):
            cos, _ = rotary(x, positions[None], kind)
        assert cos.dtype == torch.float64 and (cos[0] - cos_exact).abs().max().item() < 1e-12
        cos, _ = rotary(x, positions[None], kind)
        assert (cos[0] - cos_exact).abs().max().item() > 1e-6
