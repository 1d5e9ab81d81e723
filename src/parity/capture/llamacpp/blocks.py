"""Checkpoints that arrive a block of rows at a time (llama.cpp's micro-batches), put where their rows go.

A (T, width) checkpoint comes as (rows, width) blocks; the attention probabilities
(H, T, T) as (H, rows, T) blocks. Each tensor is reserved at its whole size on its
first block and each block written at its rows, into a trace file (core/trace/
writer.py's reserve / write_rows / discard), so nothing the size of the trace is held,
or into HeldTensors, the same three calls in memory. A tensor that one block cannot
give (its reason in the trace's not_comparable) is dropped whole.
"""

from __future__ import annotations

import numpy as np

from parity.core.names import token_axis


class HeldTensors:
    """Whole tensors in memory, filled a block of rows at a time (a TraceWriter's reserve/write_rows/discard)."""

    def __init__(self) -> None:
        self.tensors: dict[str, np.ndarray] = {}

    def __repr__(self) -> str:
        return f"<HeldTensors {len(self.tensors)}>"

    def reserve(self, name: str, shape: tuple[int, ...], dtype: np.dtype, tag: str) -> None:
        self.tensors[name] = np.zeros(shape, dtype=dtype)

    def write_rows(self, name: str, block: np.ndarray, start: int, axis: int = 0) -> None:
        index = [slice(None)] * block.ndim
        index[axis] = slice(start, start + block.shape[axis])
        self.tensors[name][tuple(index)] = block

    def discard(self, name: str) -> None:
        self.tensors.pop(name, None)


class Blocks:
    """The blocks of a pass over `total` tokens, put into `target` (a TraceWriter, or HeldTensors by default)."""

    def __init__(self, total: int, target=None) -> None:
        self.total = total
        self.target = target if target is not None else HeldTensors()
        self.placed: set[str] = set()
        self.dropped: dict[str, str] = {}   # name -> why it could not be kept

    def __repr__(self) -> str:
        return f"<Blocks {len(self.placed)} tensors of {self.total} tokens>"

    @property
    def tensors(self) -> dict[str, np.ndarray]:
        """The whole tensors, when they are held in memory; {} when they went to a file."""
        return getattr(self.target, "tensors", {})

    def put(self, name: str, block: np.ndarray, start: int) -> None:
        from parity.core.trace.trace import storage

        if name in self.dropped:
            return
        stored, tag = storage(block, "float32")
        axis = token_axis(name)
        if name not in self.placed:
            shape = list(stored.shape)
            shape[axis] = self.total
            self.target.reserve(name, tuple(shape), stored.dtype, tag)
            self.placed.add(name)
        self.target.write_rows(name, stored, start, axis)

    def drop(self, name: str, reason: str) -> None:
        if name in self.placed:
            self.placed.discard(name)
            self.target.discard(name)
        self.dropped[name] = reason
