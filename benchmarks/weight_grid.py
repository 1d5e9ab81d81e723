"""What reading a weight's grid from its values costs (diagnose/weight_grid.py), at SmolLM2's shapes.

    python benchmarks/weight_grid.py

For each of SmolLM2-135M's projection shapes (576 x 576, 192 x 576, 1536 x 576 and
576 x 1536), a random weight in float32 (no grid: rejected on its first row for each
group size), rounded to int8 per row, to Q8_0's symmetric 8 bits per 32, to Q4_1's 4
bits and a minimum per 32, to Q6_K's 6 bits per 16 (the smallest group tried), and
to NF4's code per 64 (tried after every uniform grid, the dearest): prints the grid found and the seconds it took, best of three. Time
grows with the weight's elements, and with how many group sizes are tried before
the grid's (a row, then 256, 128, 64, 32, 16); memory is a few float64 copies of the
weight.
"""

from __future__ import annotations

import time

import numpy as np

from parity.diagnose.weight_grid import grid_of

SHAPES = ((576, 576), (192, 576), (1536, 576), (576, 1536))
NF4 = np.array([-1.0, -0.6961928009986877, -0.5250730514526367, -0.39491748809814453, -0.28444138169288635,
                -0.18477343022823334, -0.09105003625154495, 0.0, 0.07958029955625534, 0.16093020141124725,
                0.24611230194568634, 0.33791524171829224, 0.44070982933044434, 0.5626170039176941,
                0.7229568362236023, 1.0])                      # bitsandbytes' NF4 code


def nf4(weight: np.ndarray, block: int = 64) -> np.ndarray:
    blocks = weight.reshape(-1, block).astype(np.float64)
    scale = np.abs(blocks).max(axis=1, keepdims=True)
    nearest = np.abs((blocks / scale)[..., None] - NF4).argmin(axis=-1)
    return (NF4[nearest] * scale).reshape(weight.shape).astype(np.float32)


def rounded(weight: np.ndarray, group: int, bits: int, symmetric: bool) -> np.ndarray:
    grouped = weight.reshape(-1, group).astype(np.float64)
    if symmetric:
        scale = np.abs(grouped).max(axis=1, keepdims=True) / (2 ** (bits - 1) - 1)
        return (np.rint(grouped / scale) * scale).reshape(weight.shape).astype(np.float32)
    low = grouped.min(axis=1, keepdims=True)
    scale = (grouped.max(axis=1, keepdims=True) - low) / (2 ** bits - 1)
    return (np.rint((grouped - low) / scale) * scale + low).reshape(weight.shape).astype(np.float32)


def timed(weight: np.ndarray) -> tuple[object, float]:
    best = float("inf")
    for _ in range(3):
        start = time.perf_counter()
        grid = grid_of(weight)
        best = min(best, time.perf_counter() - start)
    return grid, best


def main() -> None:
    rng = np.random.default_rng(0)
    for rows, columns in SHAPES:
        weight = (rng.normal(size=(rows, columns)) * 0.02).astype(np.float32)
        cases = {"float32": weight, "int8 per row": rounded(weight, columns, 8, True),
                 "Q8_0 (8 bits per 32)": rounded(weight, 32, 8, True),
                 "Q4_1 (4 bits and a minimum per 32)": rounded(weight, 32, 4, False),
                 "Q6_K blocks (6 bits per 16)": rounded(weight, 16, 6, False),
                 "NF4 (its code per 64, dequantized)": nf4(weight)}
        for name, values in cases.items():
            grid, seconds = timed(values)
            print(f"{rows:5d} x {columns:<5d} {name:36s} {seconds * 1000:7.1f} ms  {grid.describe() if grid else 'no grid'}")


if __name__ == "__main__":
    main()
