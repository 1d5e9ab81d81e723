"""The quantization grid a weight held as plain floats lies on, read from its values alone.

A port that loads a quantized file and dequantizes it as it loads (a GGUF read with
gguf-py, a GPTQ or AWQ checkpoint unpacked, weights fake-quantized for a study) holds
float tensors that are the reference's rounded to a grid: within each group of G
consecutive elements of a row, every value is offset + q x step for integers q of a
few bits; or, converted to float16 or bfloat16 and back, every value is one of that
format's. Such a weight differs from the reference's by the grid's rounding, not by a
conversion error. This module finds the grid where there is one: a narrower float
format all its values are, else the largest group (a whole row, else 256, 128, 64, 32
or 16 elements) in which every group's values sit on integer steps from its smallest,
with at most 256 levels; the step of a group is the largest that divides every gap
between its distinct values (the smallest gap, or a fraction of it where a group of
few elements leaves levels unused); else a codebook of at most 16 levels that every
block's values, divided by its largest magnitude, take (NF4, FP4). A float32 weight
(thousands of distinct gaps) has none.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

GROUPS = (256, 128, 64, 32, 16)   # tried after a whole row, largest first
MAX_LEVELS = 256                   # 8 bits
ON_STEP = 0.02                     # |value - nearest level| in steps: float32 storage of offset + q x step
MAX_FRACTION = 16                  # a step down to 1/16 of the smallest gap (sparse groups skip levels)
CODE_BLOCKS = (64, 32, 128, 256)   # blocks a codebook's scale covers, bitsandbytes' 64 first
CODE_LEVELS = 16                   # a 4-bit codebook's (NF4, FP4)


# A narrower float format whose values a float32 weight may all be, the narrowest mantissa first (bfloat16's
# values of a weight's range are float16's too): (name, mantissa bits, smallest normal exponent)
FLOAT_FORMATS = (("bfloat16", 7, -126), ("float16", 10, -14))


@dataclass(frozen=True)
class WeightGrid:
    """The grid a weight's values lie on, read from them: a uniform one per group of its rows, or a narrower
    float format's values."""

    described: str           # what grid, in words
    rounding_l2: float       # L2 norm of a round-to-nearest error on it: sqrt(sum(step²) / 12)

    def __repr__(self) -> str:
        return f"<WeightGrid {self.described}>"

    def describe(self) -> str:
        return f"{self.described} (read from its values, held as float32)"


def grid_of(weight: np.ndarray) -> WeightGrid | None:
    """The grid a weight's values lie on: a narrower float format's (any shape), else a uniform grid per group
    of a 2-D weight's rows, the largest group first, else a small codebook's levels per block; None where they
    lie on none."""
    if weight.size == 0 or not np.all(np.isfinite(weight)):
        return None
    narrower = _float_format(weight)
    if narrower is not None or weight.ndim != 2:
        return narrower
    return _uniform(weight) or _codebook(weight)


def _uniform(weight: np.ndarray) -> WeightGrid | None:
    """A uniform grid per group of a 2-D weight's rows, the largest group first."""
    columns = weight.shape[1]
    for group in (columns, *(g for g in GROUPS if g < columns)):
        if columns % group or _steps(weight[:1].reshape(-1, group).astype(np.float64)) is None:
            continue                                            # (its first row tried alone: a float weight fails it)
        steps = _steps(weight.reshape(-1, group).astype(np.float64))
        if steps is not None:
            bits = max(1, math.ceil(math.log2(steps[1])))
            where = "row" if group == columns else f"group of {group}"
            return WeightGrid(f"{bits}-bit levels, a step and an offset per {where}",
                              math.sqrt(float(np.sum(steps[0] ** 2)) * group / 12.0))
    return None


def _codebook(weight: np.ndarray) -> WeightGrid | None:
    """Values that are one codebook's levels (at most CODE_LEVELS, the same for every block) times each block's
    largest magnitude, blocks of consecutive elements (bitsandbytes' NF4 and FP4, dequantized): the step of a
    value is the width of the interval that rounds to its level, times its block's scale."""
    for block in CODE_BLOCKS:
        if weight.size % block:
            continue
        if len(_normalized_levels(weight.reshape(-1)[:block])) > CODE_LEVELS:   # its first block: a float weight fails
            continue
        blocks = weight.reshape(-1, block).astype(np.float64)
        scale = np.abs(blocks).max(axis=1, keepdims=True)
        normalized = blocks / np.where(scale > 0, scale, 1.0)
        levels = np.unique(np.round(normalized, 5))
        if not 3 <= len(levels) <= CODE_LEVELS:
            continue
        middles = (levels[1:] + levels[:-1]) / 2
        nearest = np.searchsorted(middles, normalized)                     # each value's level, no copy per level
        if np.max(np.abs(normalized - levels[nearest])) > 1e-4:
            continue
        widths = np.concatenate([middles[:1] - levels[:1], np.diff(middles), levels[-1:] - middles[-1:]])
        steps = widths[nearest] * scale
        return WeightGrid(f"a codebook of {len(levels)} levels times each block of {block}'s largest magnitude",
                          math.sqrt(float(np.sum(steps ** 2)) / 12.0))
    return None


def _normalized_levels(block: np.ndarray) -> np.ndarray:
    """The distinct values of one block divided by its largest magnitude."""
    values = block.astype(np.float64)
    largest = np.abs(values).max()
    return np.unique(np.round(values / (largest if largest > 0 else 1.0), 5))


def _float_format(weight: np.ndarray) -> WeightGrid | None:
    """The first float format of FLOAT_FORMATS every value is exactly, with the rounding to it (each
    value's spacing there, eps x 2^exponent, the subnormals' below the smallest normal); None where the values
    are of no narrower format (or all zero)."""
    values = weight.astype(np.float32)
    if not np.any(values):
        return None
    bits = values.view(np.uint32)
    exact = {"float16": bool(np.array_equal(values.astype(np.float16).astype(np.float32), values)),
             "bfloat16": not np.any(bits & np.uint32(0xFFFF))}
    for name, mantissa, smallest in FLOAT_FORMATS:
        if exact[name]:
            _, exponent = np.frexp(values.astype(np.float64))
            spacing = np.exp2(np.maximum(exponent.astype(np.float64) - 1, smallest) - mantissa)
            return WeightGrid(f"{name} values", math.sqrt(float(np.sum(spacing ** 2)) / 12.0))
    return None


def _steps(groups: np.ndarray) -> tuple[np.ndarray, int] | None:
    """(each group's step, the most levels a group uses) where every group's values are its smallest plus
    integer steps, at most MAX_LEVELS of them; None where one is not. A group's step divides every gap between
    its distinct values: the smallest gap, or a fraction 1/k of it where levels between are unused."""
    ordered = np.sort(groups, axis=1)
    low, span = ordered[:, :1], ordered[:, -1:] - ordered[:, :1]
    gaps = np.diff(ordered, axis=1)
    distinct = gaps > 1e-6 * np.maximum(span, np.finfo(np.float64).tiny)
    smallest = np.where(distinct, gaps, np.inf).min(axis=1, keepdims=True)     # (groups, 1); inf: one value
    flat = ~np.isfinite(smallest)
    smallest = np.where(flat, 1.0, smallest)
    step = np.full_like(smallest, np.nan)
    for parts in range(1, MAX_FRACTION + 1):
        trial = smallest / parts
        multiples = gaps / trial
        fits = np.all(~distinct | (np.abs(multiples - np.rint(multiples)) <= ON_STEP), axis=1, keepdims=True)
        step = np.where(np.isnan(step) & fits, trial, step)
    if np.any(np.isnan(step)):
        return None
    levels = np.rint((groups - low) / step)
    most = int(levels.max()) + 1
    if most > MAX_LEVELS or most < 2:
        return None
    return np.where(flat, 0.0, step)[:, 0], most
