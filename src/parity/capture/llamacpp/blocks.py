"""Checkpoints that arrive a block of rows at a time (llama.cpp's micro-batches), put where their rows go.

A (T, width) checkpoint comes as (rows, width) blocks; the attention probabilities
(H, T, T) as (H, rows, T) blocks. HeldBlocks fills whole tensors in memory;
FileBlocks reserves each tensor at its whole size in a trace file on its first
block and writes each block at its rows, so nothing the size of the trace is held.
A tensor that one block cannot give (its reason in the trace's not_comparable) is
dropped whole.
"""

from __future__ import annotations

import numpy as np

from parity.core.names import parse


def token_axis(name: str) -> int:
    """The axis of a checkpoint's token positions: 1 for (H, T, S) probabilities, else 0."""
    checkpoint = parse(name)
    return 1 if checkpoint is not None and checkpoint.kind == "attn_probs" else 0


def whole_shape(name: str, block: np.ndarray, total: int) -> tuple[int, ...]:
    shape = list(block.shape)
    shape[token_axis(name)] = total
    return tuple(shape)


class HeldBlocks:
    """Blocks assembled into whole tensors in memory."""

    def __init__(self, total: int) -> None:
        self.total = total
        self.tensors: dict[str, np.ndarray] = {}
        self.dropped: dict[str, str] = {}   # name -> why it could not be kept

    def __repr__(self) -> str:
        return f"<HeldBlocks {len(self.tensors)} tensors of {self.total} tokens>"

    def __contains__(self, name: str) -> bool:
        return name in self.tensors or name in self.dropped

    def put(self, name: str, block: np.ndarray, start: int) -> None:
        if name in self.dropped:
            return
        if name not in self.tensors:
            self.tensors[name] = np.zeros(whole_shape(name, block, self.total), dtype=block.dtype)
        index = [slice(None)] * block.ndim
        index[token_axis(name)] = slice(start, start + block.shape[token_axis(name)])
        self.tensors[name][tuple(index)] = block

    def drop(self, name: str, reason: str) -> None:
        self.tensors.pop(name, None)
        self.dropped[name] = reason


class FileBlocks(HeldBlocks):
    """Blocks written into a trace file (core/trace/writer.py) where their rows go."""

    def __init__(self, total: int, writer) -> None:
        super().__init__(total)
        self.writer = writer
        self.written: list[str] = []

    def __repr__(self) -> str:
        return f"<FileBlocks {len(self.written)} tensors of {self.total} tokens>"

    def __contains__(self, name: str) -> bool:
        return name in self.written or name in self.dropped

    def put(self, name: str, block: np.ndarray, start: int) -> None:
        from parity.core.trace.trace import storage

        if name in self.dropped:
            return
        stored, tag = storage(block, "float32")
        if name not in self.written:
            self.writer.reserve(name, whole_shape(name, stored, self.total), stored.dtype, tag)
            self.written.append(name)
        self.writer.write_rows(name, stored, start, token_axis(name))

    def drop(self, name: str, reason: str) -> None:
        if name in self.written:
            self.written.remove(name)
            self.writer.discard(name)
        self.dropped[name] = reason
