"""The grid a weight held as plain floats lies on, read from its values: quantized files dequantized as they
load (GGUF's Q8_0, Q4_0, Q4_1 and K-quant blocks, a scale per row or per group) and float16/bfloat16 values held
as float32; none for float32 weights."""

import math

import numpy as np
import pytest

from parity.diagnose.weight_grid import grid_of

RNG = np.random.default_rng(0)
WEIGHT = (RNG.normal(size=(96, 256)) * 0.02).astype(np.float32)


def symmetric(weight, group: int, largest: int):
    """Round-to-nearest on q x scale, |q| <= largest, one scale per group of a row: (values, steps)."""
    grouped = weight.reshape(-1, group).astype(np.float64)
    scale = np.abs(grouped).max(axis=1, keepdims=True) / largest
    return (np.rint(grouped / scale) * scale).reshape(weight.shape).astype(np.float32), np.repeat(scale, group)


def asymmetric(weight, group: int, bits: int):
    """Round-to-nearest on minimum + q x scale, 0 <= q < 2^bits, per group (Q4_1's, HQQ's, GPTQ's form)."""
    grouped = weight.reshape(-1, group).astype(np.float64)
    low = grouped.min(axis=1, keepdims=True)
    scale = (grouped.max(axis=1, keepdims=True) - low) / (2 ** bits - 1)
    return (np.rint((grouped - low) / scale) * scale + low).reshape(weight.shape).astype(np.float32), \
        np.repeat(scale, group)


@pytest.mark.parametrize("rounded, described", [
    (symmetric(WEIGHT, 256, 127), "8-bit levels, a step and an offset per row"),
    (symmetric(WEIGHT, 32, 127), "8-bit levels, a step and an offset per group of 32"),        # Q8_0
    (symmetric(WEIGHT, 32, 7), "4-bit levels, a step and an offset per group of 32"),          # Q4_0's range
    (asymmetric(WEIGHT, 32, 4), "4-bit levels, a step and an offset per group of 32"),         # Q4_1
    (asymmetric(WEIGHT, 16, 6), "6-bit levels, a step and an offset per group of 16"),         # Q6_K's blocks
    (asymmetric(WEIGHT, 128, 4), "4-bit levels, a step and an offset per group of 128"),
    (asymmetric(WEIGHT, 64, 2), "2-bit levels, a step and an offset per group of 64")])
def test_a_quantized_weight_held_as_floats_is_found_on_its_grid_with_its_rounding(rounded, described):
    values, steps = rounded
    grid = grid_of(values)
    assert grid is not None and grid.describe().startswith(described), grid
    assert grid.rounding_l2 == pytest.approx(math.sqrt(float(np.sum(steps ** 2)) / 12), rel=1e-3)
    measured = float(np.linalg.norm(values.astype(np.float64) - WEIGHT))
    assert 0.85 < measured / grid.rounding_l2 < 1.1


@pytest.mark.parametrize("dtype, name", [("float16", "float16"), ("bfloat16", "bfloat16")])
def test_values_of_a_narrower_float_format_are_its_grid(dtype, name):
    torch = pytest.importorskip("torch")
    values = torch.tensor(WEIGHT).to(getattr(torch, dtype)).float().numpy()
    grid = grid_of(values)
    assert grid is not None and grid.describe().startswith(f"{name} values"), grid
    measured = float(np.linalg.norm(values.astype(np.float64) - WEIGHT))
    assert 0.85 < measured / grid.rounding_l2 < 1.15


def test_float32_weights_lie_on_no_grid():
    assert grid_of(WEIGHT) is None
    assert grid_of(WEIGHT + np.float32(1e-3) * RNG.normal(size=WEIGHT.shape).astype(np.float32)) is None
    assert grid_of(np.zeros((4, 32), np.float32)) is None


def test_a_quantized_weight_with_noise_added_after_is_on_no_grid():
    values, _ = symmetric(WEIGHT, 32, 127)
    noisy = values + (RNG.normal(size=values.shape) * 1e-5).astype(np.float32)
    assert grid_of(noisy) is None


NF4 = np.array([-1.0, -0.6961928009986877, -0.5250730514526367, -0.39491748809814453, -0.28444138169288635,
                -0.18477343022823334, -0.09105003625154495, 0.0, 0.07958029955625534, 0.16093020141124725,
                0.24611230194568634, 0.33791524171829224, 0.44070982933044434, 0.5626170039176941,
                0.7229568362236023, 1.0])                      # bitsandbytes' NF4 code


def test_a_codebooks_levels_times_each_blocks_largest_magnitude_are_its_grid():
    """NF4 dequantized (transformers' `model.dequantize()` of a bitsandbytes build): 16 uneven levels, a scale
    per block of 64; each value's step the width of the interval that rounds to its level."""
    blocks = WEIGHT.reshape(-1, 64).astype(np.float64)
    scale = np.abs(blocks).max(axis=1, keepdims=True)
    nearest = np.abs((blocks / scale)[..., None] - NF4).argmin(axis=-1)
    values = (NF4[nearest] * scale).reshape(WEIGHT.shape).astype(np.float32)
    grid = grid_of(values)
    assert grid is not None and grid.describe().startswith("a codebook of 16 levels times each block of 64's"), grid
    measured = float(np.linalg.norm(values.astype(np.float64) - WEIGHT))
    assert 0.85 < measured / grid.rounding_l2 < 1.15
