"""What reading a weight's grid from its values costs (diagnose/weight_grid.py), at SmolLM2's shapes.

    python benchmarks/weight_grid.py

For each of SmolLM2-135M's projection shapes (576 x 576, 192 x 576, 1536 x 576 and
576 x 1536), a random weight in float32 (no grid: rejected on its first row for each
group size), rounded to int8 per row, to Q8_0's symmetric 8 bits per 32, to Q4_1's 4
bits and a minimum per 32, and to Q6_K's 6 bits per 16 (the smallest group tried,
the dearest): prints the grid found and the seconds it took, best of three. Time
grows with the weight's elements, and with how many group sizes are tried before
the grid's (a row, then 256, 128, 64, 32, 16); memory is a few float64 copies of the
weight.
"""

from __future__ import annotations

import time

import numpy as np

from parity.diagnose.weight_grid import grid_of

SHAPES = ((576, 576), (192, 576), (1536, 576), (576, 1536))


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
                 "Q6_K blocks (6 bits per 16)": rounded(weight, 16, 6, False)}
        for name, values in cases.items():
            grid, seconds = timed(values)
            print(f"{rows:5d} x {columns:<5d} {name:36s} {seconds * 1000:7.1f} ms  {grid.describe() if grid else 'no grid'}")


if __name__ == "__main__":
    main()
