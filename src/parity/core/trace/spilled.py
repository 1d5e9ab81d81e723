"""An array made a block at a time into an unlinked file and mapped read-only.

A large array a check derives from a trace (a bfloat16 tensor widened, logits with their
row shifts taken off) would be held whole in memory beside its source. Written here block
by block it is a view of a map like a tensor read from a trace file, so a pass over it
hands its pages back as it goes (core/trace/pages.py). The file lies in PARITY_SPILL_DIR,
else the system's temporary directory; it has no name, and goes when the array does.

    values = spilled(blocks, shape=(T, V), dtype=np.float64, prefix="parity-shifted-")
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterable

import numpy as np


def spilled(blocks: Iterable[np.ndarray], *, shape: tuple[int, ...], dtype, prefix: str) -> np.memmap:
    """The blocks, in order, as one read-only array of `shape` mapped from an unlinked file. OSError where no
    file can be written there (a caller holds the array in memory instead)."""
    dtype = np.dtype(dtype)
    with tempfile.TemporaryFile(prefix=prefix, dir=os.environ.get("PARITY_SPILL_DIR")) as file:
        for block in blocks:
            file.write(np.ascontiguousarray(block, dtype=dtype).data)
        file.flush()
        return np.memmap(file, dtype=dtype, mode="r", shape=tuple(shape))
