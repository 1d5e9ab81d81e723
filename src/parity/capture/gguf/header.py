"""A GGUF file's header alone: its metadata fields and its tensors' names, types and shapes.

gguf-py's GGUFReader maps every tensor and turns every field into numpy parts,
the vocabulary's 49,152 strings included: about 2 s for SmolLM2-135M, paid by
each caller. What parity needs before loading a model (the architecture, the
layer count, which type each weight has) is in the header, read here in a few
milliseconds: scalar and string fields are kept, arrays are stepped over (their
length is kept), and nothing beyond the tensor infos is read. Every length is
checked against the file, so a damaged file is one clear error, never a huge
allocation. Results are kept per file identity (path, inode, size, mtime, ctime).

This is the one reader in front of transformers and llama.cpp: only a regular
file is opened (never a FIFO, a directory, a device such as /dev/zero, or a file
under /proc or /sys, whatever link leads there), and what the header says is checked by
checks.py (tensor types against sizes, offsets, counts, norms and RoPE, token
ids) before either library reads a byte of it.
"""

from __future__ import annotations

import os
import stat
import struct
from functools import lru_cache
from pathlib import Path
from typing import Any

from parity.capture.gguf.types import GGML_TYPES, GGUFHeader, GGUFTensorInfo  # noqa: F401  (read from here)
from parity.core.errors import CaptureError
from parity.core.printable import printable

MAGIC = b"GGUF"
MAX_NAME_BYTES = 1 << 16           # a key or tensor name longer than this is damage, not a name
MAX_STRING_BYTES = 1 << 26         # a single string field (a chat template is a few KB)
MAX_DIMS = 8

# value type -> struct format of one element (strings and arrays are read apart)
_SCALARS = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?", 10: "<Q", 11: "<q", 12: "<d"}
_STRING, _ARRAY = 8, 9


def read_header(path: str | Path) -> GGUFHeader:
    """The checked header of the GGUF file at `path` (kept for as long as the file is unchanged);
    CaptureError, in one line, for anything that is not a regular, sound GGUF file."""
    path = Path(path)
    status = regular_file(path)
    return _read_header(str(path.resolve()), status.st_ino, status.st_size, status.st_mtime_ns, status.st_ctime_ns)


def regular_file(path: Path, *, what: str = "a .gguf file") -> os.stat_result:
    """The status of `path` when it is a regular file outside /proc and /sys (links followed to see where they
    lead, nothing opened); otherwise a CaptureError saying what it is (a FIFO, a device, a directory)."""
    shown = printable(path)
    try:
        resolved = os.path.realpath(path)
        status = os.stat(path)
    except (OSError, ValueError) as error:
        reason = getattr(error, "strerror", None) or str(error)
        raise CaptureError(f"{shown}: cannot read it ({reason}); check the path") from None
    if resolved.startswith(_SYSTEM_TREES) or resolved in ("/proc", "/sys"):
        raise CaptureError(f"{shown}: leads to {printable(resolved)[:60]}, a system file, not {what}; give {what}")
    if not stat.S_ISREG(status.st_mode):
        kind = ("a directory" if stat.S_ISDIR(status.st_mode) else "a FIFO" if stat.S_ISFIFO(status.st_mode)
                else "a device" if stat.S_ISCHR(status.st_mode) or stat.S_ISBLK(status.st_mode) else "not a regular file")
        raise CaptureError(f"{shown}: is {kind}, not {what}; give {what}")
    return status


_SYSTEM_TREES = ("/proc/", "/sys/")   # pseudo-files whose sizes lie; a device under /dev is not a regular file


@lru_cache(maxsize=16)
def _read_header(path: str, _inode: int, size: int, _mtime_ns: int, _ctime_ns: int) -> GGUFHeader:
    from parity.capture.gguf.checks import check_header

    try:
        descriptor = os.open(path, os.O_RDONLY | os.O_NONBLOCK)   # a FIFO swapped in since the stat cannot block
    except OSError as error:
        raise CaptureError(f"{printable(path)}: cannot read it ({error.strerror}); check the path") from None
    with os.fdopen(descriptor, "rb") as file:
        if not stat.S_ISREG(os.fstat(file.fileno()).st_mode):
            raise CaptureError(f"{printable(path)}: is not a regular file; give a .gguf file")
        header = _Parser(file, size, printable(path)).header()
    check_header(header, printable(path))
    return header


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
            if key in fields:
                raise self._damaged(f"the field '{printable(key)[:60]}' is there twice")
            fields[key] = self._value(self._scalar("<I"), key)
        tensors = {}
        for _ in range(tensor_count):
            info = self._tensor_info()
            if info.name in tensors:
                raise self._damaged(f"the tensor '{printable(info.name)[:60]}' is there twice")
            tensors[info.name] = info
        alignment = fields.get("general.alignment", DEFAULT_ALIGNMENT)
        if type(alignment) is not int or not 0 < alignment <= 1 << 16 or alignment & (alignment - 1):
            raise self._damaged(f"general.alignment is {printable(alignment)[:20]}, not a power of two up to 65,536")
        end = self.file.tell()
        return GGUFHeader(version, fields, tensors, data_start=end + (-end % alignment), size=self.size)

    def _tensor_info(self) -> GGUFTensorInfo:
        name = self._string(MAX_NAME_BYTES)
        dims = self._scalar("<I")
        if dims > MAX_DIMS:
            raise self._damaged(f"tensor '{printable(name)[:60]}' has {dims} dimensions")
        shape = tuple(self._scalar("<Q") for _ in range(dims))
        ggml_type = self._scalar("<I")
        offset = self._scalar("<Q")
        return GGUFTensorInfo(name, _type_name(ggml_type), shape, ggml_type, offset)

    def _value(self, value_type: int, key: str) -> Any:
        if value_type in _SCALARS:
            return self._scalar(_SCALARS[value_type])
        if value_type == _STRING:
            return self._string(MAX_STRING_BYTES)
        if value_type == _ARRAY:
            element_type, count = self._scalar("<I"), self._scalar("<Q")
            self._skip_array(element_type, count, key)
            return ("array", element_type, count)
        raise self._damaged(f"field '{printable(key)[:60]}' has value type {value_type}, which GGUF does not define")

    def _skip_array(self, element_type: int, count: int, key: str) -> None:
        if element_type in _SCALARS:
            length = count * struct.calcsize(_SCALARS[element_type])
            self._check_room(length, f"array field '{printable(key)[:60]}'")
            self.file.seek(length, os.SEEK_CUR)
        elif element_type == _STRING:
            self._check_room(count * 8, f"array field '{printable(key)[:60]}'")
            for _ in range(count):
                (length,) = struct.unpack("<Q", self._take(8))
                self._check_room(length, f"a string of array field '{printable(key)[:60]}'")
                self.file.seek(length, os.SEEK_CUR)
        else:  # arrays of arrays do not occur in files llama.cpp writes
            raise self._damaged(f"array field '{printable(key)[:60]}' holds elements of type {element_type}")

    def _string(self, limit: int) -> str:
        length = self._scalar("<Q")
        if length > limit:
            raise self._damaged(f"a string of {length:,} bytes (at most {limit:,} are read)")
        raw = self._take(length)
        try:
            return raw.decode("utf-8")   # GGUF's strings are UTF-8; gguf-py (transformers' reader) decodes strictly
        except UnicodeDecodeError as error:
            raise self._damaged(f"a string at byte {self.file.tell() - length + error.start:,} is not UTF-8 "
                                f"({printable(raw[:40].decode('utf-8', 'replace'))!r})") from None

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
    return GGML_TYPES[ggml_type][0] if ggml_type in GGML_TYPES else f"type {ggml_type}"


DEFAULT_ALIGNMENT = 32
