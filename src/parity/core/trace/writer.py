"""Writing a trace as its tensors arrive: a parity-trace/2 safetensors file, never held whole in memory.

A safetensors file starts with its header, which lists every tensor's offsets, and
the tensors are only known once the forward pass has run. The writer leaves room
for the header, appends each tensor's bytes as it comes, and writes the header into
that room at the end, padded with spaces as the format allows. A header larger
than the room (more tensors than expected) moves the body up, once, at the end.
A tensor made in blocks of rows (llama.cpp's micro-batches) is reserved at its
whole size and written a block at a time where its rows go.

The file is written through `atomic_file`: it appears under its name only when
`finish` has run, so an interrupted capture leaves the previous file or none.
"""

from __future__ import annotations

import json
import struct
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO, Iterator

import numpy as np

from parity.core.errors import OptionError
from parity.core.files import atomic_file, check_output_path

_COPY_BLOCK = 8 << 20


class TraceWriter:
    """Appends tensors to an open file after `reserve` bytes kept for the header."""

    def __init__(self, file: BinaryIO, reserve: int) -> None:
        self._file = file
        self._reserve = reserve + (-reserve % 8)       # the body starts 8-byte aligned
        self._entries: dict[str, dict] = {}
        self._offset = 0                               # bytes of body written
        file.seek(self._at(0))

    def __repr__(self) -> str:
        return f"<TraceWriter {len(self._entries)} tensors, {self._offset:,} bytes>"

    def _at(self, offset: int) -> int:
        """The file position of byte `offset` of the body (after the 8-byte length and the header's room)."""
        return 8 + self._reserve + offset

    def __contains__(self, name: str) -> bool:
        return name in self._entries

    @property
    def names(self) -> list[str]:
        return list(self._entries)

    def add(self, name: str, array: np.ndarray, tag: str) -> None:
        """Append one tensor, stored as `array` (little-endian, C order) under safetensors dtype `tag`."""
        array = np.ascontiguousarray(array)
        self._file.seek(self._at(self._offset))
        self._file.write(array.reshape(-1).view(np.uint8).data)
        self._entries[name] = {"dtype": tag, "shape": list(array.shape),
                               "data_offsets": [self._offset, self._offset + array.nbytes]}
        self._offset += array.nbytes

    def reserve(self, name: str, shape: tuple[int, ...], dtype: np.dtype, tag: str) -> None:
        """Make room for a tensor of `shape` whose blocks of rows come later (write_rows); zeros until then."""
        nbytes = int(np.prod(shape, dtype=np.int64)) * np.dtype(dtype).itemsize
        self._entries[name] = {"dtype": tag, "shape": list(shape), "data_offsets": [self._offset, self._offset + nbytes]}
        self._offset += nbytes
        self._file.truncate(self._at(self._offset))

    def write_rows(self, name: str, block: np.ndarray, start: int, axis: int = 0) -> None:
        """Write `block` into the reserved tensor `name` at `start` along `axis`; every axis but that one whole
        (a (H, rows, S) block of an (H, T, S) tensor: axis 1)."""
        entry = self._entries[name]
        shape, first = entry["shape"], entry["data_offsets"][0]
        block = np.ascontiguousarray(block)
        inner = int(np.prod(shape[axis + 1:], dtype=np.int64)) * block.itemsize   # bytes of one row
        outer = int(np.prod(shape[:axis], dtype=np.int64))
        rows = block.reshape(outer, -1)                                          # (prefix, rows * inner)
        for index in range(outer):
            self._file.seek(self._at(first + (index * shape[axis] + start) * inner))
            self._file.write(rows[index].view(np.uint8).data)

    def discard(self, name: str) -> None:
        """Forget a tensor written or reserved; `finish` closes the gap it leaves (safetensors allows none)."""
        self._entries.pop(name, None)

    def _close_gaps(self) -> None:
        """Move each tensor down over the gaps discarded ones left, first to last (never over unread bytes)."""
        cursor = 0
        for entry in sorted(self._entries.values(), key=lambda entry: entry["data_offsets"][0]):
            start, stop = entry["data_offsets"]
            if start > cursor:
                self._file.flush()
                for block_start in range(start, stop, _COPY_BLOCK):
                    block_stop = min(stop, block_start + _COPY_BLOCK)
                    self._file.seek(self._at(block_start))
                    data = self._file.read(block_stop - block_start)
                    self._file.seek(self._at(cursor + block_start - start))
                    self._file.write(data)
                entry["data_offsets"] = [cursor, cursor + stop - start]
            cursor += stop - start
        self._offset = cursor

    def restart(self) -> None:
        """Forget every tensor written (a capture that must run again)."""
        self._entries.clear()
        self._offset = 0
        self._file.seek(self._at(0))
        self._file.truncate()

    def finish(self, metadata: dict[str, str]) -> None:
        """Write the header: into the room kept for it, or, when it needs more, after moving the body up."""
        self._close_gaps()
        self._file.truncate(self._at(self._offset))
        header = {"__metadata__": metadata, **self._entries}
        encoded = json.dumps(header, separators=(",", ":")).encode()
        room = self._reserve
        if len(encoded) > room:
            room = len(encoded) + (-len(encoded) % 8)
            self._move_body(8 + self._reserve, 8 + room)
        self._file.seek(0)
        self._file.write(struct.pack("<Q", room) + encoded + b" " * (room - len(encoded)))
        self._file.seek(0, 2)

    def _move_body(self, start: int, new_start: int) -> None:
        """Copy the body from `start` to `new_start` (> start), last block first, so no byte is overwritten
        before it is copied."""
        self._file.flush()
        end = start + self._offset
        while end > start:
            block = min(_COPY_BLOCK, end - start)
            end -= block
            self._file.seek(end)
            data = self._file.read(block)
            self._file.seek(end - start + new_start)
            self._file.write(data)


@contextmanager
def trace_file(path: str | Path, *, overwrite: bool = False, expected_tensors: int = 1000,
               metadata_bytes: int = 0) -> Iterator[TraceWriter]:
    """A TraceWriter onto `path` (a .safetensors file, checked first), which appears there only when the
    block ends without an exception; the caller calls `finish` before that."""
    path = Path(path)
    if path.suffix != ".safetensors":
        raise OptionError(f"{path}: traces are written as .safetensors; name the output '*.safetensors'")
    path = check_output_path(path, overwrite=overwrite)
    reserve = 4096 + metadata_bytes + 160 * expected_tensors  # a header entry is ~100 bytes
    with atomic_file(path, readable=True) as file:
        yield TraceWriter(file, reserve)
