"""A GGUF file's header alone: its metadata fields and its tensors' names, types and shapes.

gguf-py's GGUFReader maps every tensor and turns every field into numpy parts,
the vocabulary's 49,152 strings included: about 2 s for SmolLM2-135M, paid by
each caller. What parity needs before loading a model (the architecture, the
layer count, which type each weight has) is in the header, read here in a few
milliseconds: scalar and string fields are kept, arrays are stepped over (their
length is kept), and nothing beyond the tensor infos is read. Every length is
checked against the file, so a damaged file is one clear error, never a huge
allocation. Results are kept per file identity (path, inode, size, mtime).
"""

from __future__ import annotations

import os
import struct
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

from parity.core.errors import CaptureError

MAGIC = b"GGUF"
MAX_NAME_BYTES = 1 << 16           # a key or tensor name longer than this is damage, not a name
MAX_STRING_BYTES = 1 << 26         # a single string field (a chat template is a few KB)
MAX_DIMS = 8

# value type -> struct format of one element (strings and arrays are read apart)
_SCALARS = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?", 10: "<Q", 11: "<q", 12: "<d"}
_STRING, _ARRAY = 8, 9


@dataclass(frozen=True)
class GGUFTensorInfo:
    name: str
    ggml_type: str               # e.g. 'Q4_1', 'F32'
    shape: tuple[int, ...]       # in ggml's order (fastest-varying first)

    def __repr__(self) -> str:
        return f"<GGUFTensorInfo {self.name} {self.ggml_type}{list(self.shape)}>"


@dataclass(frozen=True)
class GGUFHeader:
    version: int
    fields: dict[str, Any]       # scalars and strings as values; an array as ('array', element type, count)
    tensors: dict[str, GGUFTensorInfo]

    def __repr__(self) -> str:
        return f"<GGUFHeader v{self.version} {len(self.fields)} fields, {len(self.tensors)} tensors>"

    def text(self, key: str) -> str | None:
        value = self.fields.get(key)
        return value if isinstance(value, str) else None

    def number(self, key: str) -> int | None:
        value = self.fields.get(key)
        return int(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None

    @property
    def architecture(self) -> str | None:
        return self.text("general.architecture")


def read_header(path: str | Path) -> GGUFHeader:
    """The header of the GGUF file at `path` (kept for as long as the file is unchanged)."""
    path = Path(path)
    try:
        status = os.stat(path)
    except OSError as error:
        raise CaptureError(f"{path}: cannot read it ({error.strerror}); check the path") from None
    return _read_header(str(path.resolve()), status.st_ino, status.st_size, status.st_mtime_ns)


@lru_cache(maxsize=16)
def _read_header(path: str, _inode: int, size: int, _mtime_ns: int) -> GGUFHeader:
    with open(path, "rb") as file:
        return _Parser(file, size, path).header()


class _Parser:
    """Reads the header from the start of the file, checking each length against what is left."""

    def __init__(self, file, size: int, shown: str) -> None:
        self.file, self.size, self.shown = file, size, shown

    def header(self) -> GGUFHeader:
        if self.size < 24 or self._take(4) != MAGIC:
            raise self._damaged("it does not start with GGUF's magic bytes", fix="give a .gguf file")
        version = self._scalar("<I")
        if version not in (2, 3):
            raise self._damaged(f"it is GGUF version {version}; parity reads versions 2 and 3",
                                fix="convert it again with a current llama.cpp")
        tensor_count, field_count = self._scalar("<Q"), self._scalar("<Q")
        if tensor_count > self.size // 24 or field_count > self.size // 12:  # each takes at least that many bytes
            raise self._damaged(f"it declares {tensor_count:,} tensors and {field_count:,} fields, more than "
                                f"{self.size:,} bytes can hold")
        fields = {}
        for _ in range(field_count):
            key = self._string(MAX_NAME_BYTES)
            fields[key] = self._value(self._scalar("<I"), key)
        tensors = {}
        for _ in range(tensor_count):
            info = self._tensor_info()
            tensors[info.name] = info
        return GGUFHeader(version, fields, tensors)

    def _tensor_info(self) -> GGUFTensorInfo:
        name = self._string(MAX_NAME_BYTES)
        dims = self._scalar("<I")
        if dims > MAX_DIMS:
            raise self._damaged(f"tensor '{name[:60]}' has {dims} dimensions")
        shape = tuple(self._scalar("<Q") for _ in range(dims))
        ggml_type = self._scalar("<I")
        self._scalar("<Q")  # the data offset: not needed for the header
        return GGUFTensorInfo(name, _type_name(ggml_type), shape)

    def _value(self, value_type: int, key: str) -> Any:
        if value_type in _SCALARS:
            return self._scalar(_SCALARS[value_type])
        if value_type == _STRING:
            return self._string(MAX_STRING_BYTES)
        if value_type == _ARRAY:
            element_type, count = self._scalar("<I"), self._scalar("<Q")
            self._skip_array(element_type, count, key)
            return ("array", element_type, count)
        raise self._damaged(f"field '{key[:60]}' has value type {value_type}, which GGUF does not define")

    def _skip_array(self, element_type: int, count: int, key: str) -> None:
        if element_type in _SCALARS:
            length = count * struct.calcsize(_SCALARS[element_type])
            self._check_room(length, f"array field '{key[:60]}'")
            self.file.seek(length, os.SEEK_CUR)
        elif element_type == _STRING:
            self._check_room(count * 8, f"array field '{key[:60]}'")
            for _ in range(count):
                (length,) = struct.unpack("<Q", self._take(8))
                self._check_room(length, f"a string of array field '{key[:60]}'")
                self.file.seek(length, os.SEEK_CUR)
        else:  # arrays of arrays do not occur in files llama.cpp writes
            raise self._damaged(f"array field '{key[:60]}' holds elements of type {element_type}")

    def _string(self, limit: int) -> str:
        length = self._scalar("<Q")
        if length > limit:
            raise self._damaged(f"a string of {length:,} bytes (at most {limit:,} are read)")
        return self._take(length).decode("utf-8", errors="replace")

    def _scalar(self, layout: str):
        return struct.unpack(layout, self._take(struct.calcsize(layout)))[0]

    def _take(self, length: int) -> bytes:
        self._check_room(length, "the header")
        return self.file.read(length)

    def _check_room(self, length: int, what: str) -> None:
        if length > self.size - self.file.tell():
            raise self._damaged(f"{what} runs past the end of the file", fix="the file is truncated: copy it again")

    def _damaged(self, why: str, fix: str = "the file is damaged: copy or convert it again") -> CaptureError:
        return CaptureError(f"{self.shown}: not a readable GGUF header ({why}); {fix}")


def _type_name(ggml_type: int) -> str:
    try:
        from gguf import GGMLQuantizationType
    except ImportError:
        return f"type {ggml_type}"
    try:
        return GGMLQuantizationType(ggml_type).name
    except ValueError:
        return f"type {ggml_type}"
