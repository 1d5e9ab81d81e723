"""Writing a trace as its tensors arrive: a parity-trace/2 safetensors file, never held whole in memory.

A safetensors file starts with its header, which lists every tensor's offsets, and
the tensors are only known once the forward pass has run. The writer leaves room
for the header, appends each tensor's bytes as it comes, and writes the header into
that room at the end, padded with spaces as the format allows. A header larger
than the room (more tensors than expected) moves the body up, once, at the end.

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
        file.seek(8 + self._reserve)

    def __repr__(self) -> str:
        return f"<TraceWriter {len(self._entries)} tensors, {self._offset:,} bytes>"

    def __contains__(self, name: str) -> bool:
        return name in self._entries

    @property
    def names(self) -> list[str]:
        return list(self._entries)

    def add(self, name: str, array: np.ndarray, tag: str) -> None:
        """Append one tensor, stored as `array` (little-endian, C order) under safetensors dtype `tag`."""
        array = np.ascontiguousarray(array)
        self._file.write(array.reshape(-1).view(np.uint8).data)
        self._entries[name] = {"dtype": tag, "shape": list(array.shape),
                               "data_offsets": [self._offset, self._offset + array.nbytes]}
        self._offset += array.nbytes

    def restart(self) -> None:
        """Forget every tensor written (a capture that must run again)."""
        self._entries.clear()
        self._offset = 0
        self._file.seek(8 + self._reserve)
        self._file.truncate()

    def finish(self, metadata: dict[str, str]) -> None:
        """Write the header: into the room kept for it, or, when it needs more, after moving the body up."""
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
