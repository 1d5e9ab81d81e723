"""llama.cpp's activation rounding, emulated: checked against gguf-py's own Q8_0 quantizer and ggml's rules."""

import numpy as np
import pytest

torch = pytest.importorskip("torch")
gguf = pytest.importorskip("gguf")

from parity.capture.llamacpp.numerics import llamacpp_activation_rounding, round_block_32, round_block_256, rounding_for  # noqa: E402


def test_block_32_rounding_equals_a_q8_0_round_trip():
    from gguf import quants

    x = np.random.default_rng(0).standard_normal((8, 128)).astype(np.float32)
    expected = quants.dequantize(quants.quantize(x, gguf.GGMLQuantizationType.Q8_0), gguf.GGMLQuantizationType.Q8_0)
    np.testing.assert_array_equal(round_block_32(torch.from_numpy(x)).numpy(), expected)


def test_block_32_rounds_halves_away_from_zero_with_an_fp16_scale():
    x = torch.zeros(32)
    x[0], x[1], x[2] = 127.0, 2.5, -2.5          # scale 1: 2.5 -> 3, -2.5 -> -3 (roundf), as ggml does
    assert round_block_32(x)[:3].tolist() == [127.0, 3.0, -3.0]
    assert torch.equal(round_block_32(torch.zeros(32)), torch.zeros(32))


def test_block_256_rounding_uses_the_signed_largest_value():
    x = torch.linspace(-1, 0.5, 256)
    rounded = round_block_256(x)
    scale = 1 / 127                               # |max| = 1 (the value -1): iscale = 127
    assert torch.allclose(rounded, torch.round(x / scale) * scale, atol=1e-6)
    assert (rounded - x).abs().max() <= scale / 2 + 1e-6


def test_each_weight_type_gets_its_rounding():
    assert rounding_for("Q4_1") is round_block_32 and rounding_for("Q8_0") is round_block_32
    assert rounding_for("Q4_K") is round_block_256
    assert rounding_for("F32") is None
    assert rounding_for("F16")(torch.tensor([1 + 2**-12])).item() == 1.0


def test_hooks_cover_every_quantized_matmul_of_smollm2_and_come_off(smollm2_reference, smollm2_gguf):
    model = smollm2_reference.model
    with llamacpp_activation_rounding(model, smollm2_gguf) as count:
        assert count == 30 * 7 + 1          # q, k, v, o, gate, up, down per layer, and the tied output
    assert not any(module._forward_pre_hooks for module in model.modules())


def test_every_family_gets_its_projections_rounded_through_gguf_names():
    """GPT-2's Conv1D projections (not nn.Linear, not Llama-named) are hooked, and its GELU gets the table."""
    from conftest import need

    need("llama_cpp")
    import gguf_models
    from parity.capture.hf.model import load_model
    from parity.capture.llamacpp.numerics import llamacpp_numerics

    if gguf_models.converter_dir() is None:
        pytest.skip("llama.cpp's converter is not in the parity cache")
    path = gguf_models.gguf("gpt2", "q8_0")
    model = load_model(gguf_models.model_dir("gpt2")).model
    with llamacpp_numerics(model, path) as emulated:
        assert emulated["activation rounding"] == 3 * 4 + 1      # c_attn, c_proj, c_fc, mlp.c_proj; lm_head
        assert emulated["gelu table"] == 3 and emulated["kv cache f16"] == 3
    assert not any(module._forward_pre_hooks or module._forward_hooks for module in model.modules())
    assert "forward" not in model.transformer.h[0].attn.__dict__
