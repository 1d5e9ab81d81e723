"""Reading the three trace forms: every header checked against the file before anything is allocated.

Each reader returns the trace's tensors as `TensorSource`s (shape and dtype checked,
data read on demand) and its raw metadata. Limits (docs/trace-format.md):
a safetensors header of at most MAX_HEADER_BYTES, at most MAX_TENSORS tensors of at
most npy.MAX_DIMS dimensions each, every data range inside the file and exactly the
size its shape and dtype need; JSON nested at most boundedjson.MAX_DEPTH deep; only
regular files inside the trace's own directory (tracefiles.py); zip archives checked
member by member (npz.py). Every failure is a TraceError naming the file and field.
"""

from __future__ import annotations

import math
import os
import struct
import zlib
from pathlib import Path
from typing import Any

import numpy as np

from parity.core.trace import bounded_json as boundedjson, npy, npz
from parity.core.errors import TraceError
from parity.core.printable import printable
from parity.core.trace.lazy import SharedMapping, TensorSource, drop_batch_axis, head_of, mapped
from parity.core.trace.opening import FileRef
from parity.core.trace.pages import PagesBehind
from parity.core.trace.spilled import spilled
from parity.core.trace.metadata import MAX_METADATA_BYTES, check_dtypes, check_tensor_name

MAX_HEADER_BYTES = 100 * 1024 * 1024   # the safetensors library's own limit
MAX_TENSORS = 65_536
WIDEN_HELD_BYTES = 64 << 20   # a bfloat16 tensor whose float32 is larger is widened into a file, then mapped
_WIDEN_BLOCK = 1 << 20        # elements widened at a time on the way to that file (4 MiB)
_NPY_FIX = "write it with np.save, or by hand as docs/trace-format.md shows"

# safetensors dtype tag -> (numpy storage dtype, name parity reports)
SAFETENSORS_DTYPES: dict[str, tuple[str, str]] = {
    "F64": ("<f8", "float64"),
    "F32": ("<f4", "float32"),
    "F16": ("<f2", "float16"),
    "BF16": ("<u2", "bfloat16"),  # widened to float32 on read
    "I64": ("<i8", "int64"),
    "I32": ("<i4", "int32"),
    "I16": ("<i2", "int16"),
    "I8": ("i1", "int8"),
    "U8": ("u1", "uint8"),
    "BOOL": ("?", "bool"),
}


# --- safetensors ------------------------------------------------------------------


def read_safetensors(path: Path) -> tuple[dict[str, TensorSource], Any]:
    file = FileRef.given(path)
    if file.size < 8:
        raise TraceError(f"{path}: not a safetensors file (too short: {file.size} bytes); expected a parity trace")
    (header_size,) = struct.unpack("<Q", file.read(0, 8))
    if header_size > min(MAX_HEADER_BYTES, file.size - 8):
        raise TraceError(f"{path}: not a safetensors file (bad header length {header_size:,} for a file of "
                         f"{file.size:,} bytes); expected a parity trace")
    try:
        header = boundedjson.loads(file.read(8, header_size), max_bytes=MAX_HEADER_BYTES, what="header")
    except ValueError as error:
        raise TraceError(f"{path}: not a safetensors file ({error}); expected a parity trace") from None
    if not isinstance(header, dict):
        raise TraceError(f"{path}: not a safetensors file (header is not a JSON object); expected a parity trace")
    metadata = header.pop("__metadata__", None) or {}
    _check_count(len(header), path)
    body_offset, body_size = 8 + header_size, file.size - 8 - header_size
    mapping = SharedMapping(file)
    sources = {check_tensor_name(name, path): _safetensors_source(file, mapping, name, entry, body_offset, body_size)
               for name, entry in header.items()}
    return sources, metadata


def _safetensors_source(file: FileRef, mapping: SharedMapping, name: str, entry: Any, body_offset: int,
                        body_size: int) -> TensorSource:
    where = f"{file.shown}: tensor '{name}'"
    if not isinstance(entry, dict):
        raise TraceError(f"{where}: its header entry is not an object; write dtype, shape and data_offsets")
    tag, shape, offsets = entry.get("dtype"), entry.get("shape"), entry.get("data_offsets")
    if not isinstance(tag, str) or tag not in SAFETENSORS_DTYPES:
        raise TraceError(f"{where} has dtype {str(tag)[:20]!r}, which parity does not read; "
                         f"write one of {', '.join(SAFETENSORS_DTYPES)}")
    shape = _checked_shape(shape, where)
    if not (isinstance(offsets, list) and len(offsets) == 2 and all(_is_size(value) for value in offsets)):
        raise TraceError(f"{where}: data_offsets is {str(offsets)[:40]}; write two non-negative integers [begin, end]")
    begin, end = offsets
    storage, dtype = SAFETENSORS_DTYPES[tag]
    needed = math.prod(shape) * np.dtype(storage).itemsize
    if not begin <= end <= body_size or end - begin != needed:
        raise TraceError(f"{where}: data offsets [{begin}, {end}] do not match its shape {list(shape)} and dtype {tag} "
                         f"({needed:,} bytes) within the {body_size:,} bytes of data; the file is damaged or truncated")

    def widened(array: np.ndarray) -> np.ndarray:
        return bfloat16_widened(array) if dtype == "bfloat16" else array

    def load() -> np.ndarray:
        array = mapping.array(body_offset + begin, np.dtype(storage), shape)
        if dtype == "bfloat16":
            array = bfloat16_read(array)
            release()          # the widened copy is the tensor now: its bits' pages go back at once
        return _drop_batch_axis(array)

    def load_rows(count: int, rows_shape: tuple[int, ...]) -> np.ndarray:
        # read, not mapped: a few rows of a huge tensor must not map the whole file
        return widened(mapped(file, body_offset + begin, np.dtype(storage), rows_shape))

    def release() -> None:
        mapping.release(body_offset + begin, needed)

    return TensorSource(drop_batch_axis(shape), dtype, load, head_of(load_rows, shape), release)


def bfloat16_read(bits: np.ndarray) -> np.ndarray:
    """A bfloat16 tensor read from a trace, as float32. Past WIDEN_HELD_BYTES (a bfloat16 port's logits: 1.6 GB
    widened at T=8,192) the float32 goes to an unlinked file (in PARITY_SPILL_DIR, else the system's temporary
    directory) a block at a time and is mapped read-only, like a float32 tensor of a trace: a pass over it hands
    its pages back as it goes (core/trace/pages.py), so it is never held whole. The file goes when the array
    does; where no file can be written, it is widened in memory."""
    if bits.size * 4 <= WIDEN_HELD_BYTES:
        return bfloat16_widened(bits)
    try:
        return _widened_to_file(bits)
    except OSError:
        return bfloat16_widened(bits)   # only memory is lost


def _widened_to_file(bits: np.ndarray) -> np.ndarray:
    flat = np.ascontiguousarray(bits).reshape(-1)    # a view where the bits lie in the map as stored
    return spilled(_widened_blocks(flat), shape=tuple(bits.shape), dtype=np.float32, prefix="parity-bfloat16-")


def _widened_blocks(flat: np.ndarray):
    """float32 blocks of the bfloat16 bits `flat`, one reused buffer; the bits' pages handed back as they go."""
    behind = PagesBehind(flat)
    block = np.empty(min(_WIDEN_BLOCK, flat.size), dtype=np.uint32)
    for start in range(0, flat.size, _WIDEN_BLOCK):
        stop = min(start + _WIDEN_BLOCK, flat.size)
        widened = block[:stop - start]
        np.left_shift(flat[start:stop], np.uint32(16), out=widened, dtype=np.uint32)
        yield widened.view(np.float32)
        behind.passed(stop)


def bfloat16_widened(bits: np.ndarray) -> np.ndarray:
    """bfloat16 bits (uint16) as the float32 values they are, exactly: the bits shifted straight into one float32
    buffer (`astype(uint32) << 16` made two uint32 temporaries, 4x the stored tensor: 3.2 GB beside a bfloat16
    port's 0.8 GB of logits at T=8,192)."""
    widened = np.empty(bits.shape, dtype=np.uint32)
    np.left_shift(bits, np.uint32(16), out=widened, dtype=np.uint32)
    return widened.view(np.float32)


def _checked_shape(shape: Any, where: str) -> tuple[int, ...]:
    if not (isinstance(shape, list) and len(shape) <= npy.MAX_DIMS and all(_is_size(size) for size in shape)):
        raise TraceError(f"{where}: shape is {str(shape)[:40]}; write a list of at most {npy.MAX_DIMS} "
                         "non-negative integers")
    return tuple(shape)


def _is_size(value: Any) -> bool:
    return type(value) is int and 0 <= value < 2**63


# --- npz --------------------------------------------------------------------------


def read_npz(path: Path) -> tuple[dict[str, TensorSource], Any]:
    archive = FileRef.given(path)
    try:
        members = npz.members(archive)
    except ValueError as error:
        raise TraceError(f"{path}: not a readable .npz ({error}); write it with np.savez (see docs/trace-format.md)") from None
    _check_count(len(members), path)
    sources, metadata = {}, {}
    mapping = SharedMapping(archive)
    for member in members:
        if not member.name.endswith(".npy"):
            raise TraceError(f"{path}: member {member.name!r} is not an .npy array; an .npz trace holds "
                             "only what np.savez writes")
        name = member.name.removesuffix(".npy")
        if name == "__metadata__":
            metadata = _npz_metadata(archive, member)
        else:
            sources[check_tensor_name(name, path)] = _npz_source(archive, mapping, member, name)
    return sources, metadata


def _npz_source(archive: FileRef, mapping: SharedMapping, member: npz.Member, name: str) -> TensorSource:
    where = f"{archive.shown}: tensor '{name}'"
    header = _npz_header(archive, member, where)

    def load() -> np.ndarray:
        if member.method == 0:
            data_offset = member.data_offset + header.data_offset
            _crc(member, where, archive.read(member.data_offset, header.data_offset),
                 mapping.array(data_offset, np.dtype("u1"), (header.nbytes,)))
            array = mapping.array(data_offset, header.dtype, header.shape, fortran=header.fortran_order)
        else:
            try:
                buffer = npz.inflate(archive, member)
            except ValueError as error:
                raise TraceError(f"{where}: {error}; the .npz is damaged, write it again") from None
            array = np.frombuffer(buffer, header.dtype, math.prod(header.shape), header.data_offset)
            array = array.reshape(header.shape, order="F" if header.fortran_order else "C")
        return _drop_batch_axis(array)

    def release() -> None:
        if member.method == 0:
            mapping.release(member.data_offset + header.data_offset, header.nbytes)

    return TensorSource(drop_batch_axis(header.shape), header.dtype_name, load, release=release)


def _npz_header(archive: FileRef, member: npz.Member, where: str, *, text: bool = False) -> npy.NpyHeader:
    length = min(member.size, npy.PREAMBLE_BYTES + npy.MAX_HEADER_BYTES)
    try:
        head = archive.read(member.data_offset, length) if member.method == 0 else _inflate_head(archive, member, length)
        return npy.parse_header(head, member.size, text=text)
    except ValueError as error:
        raise TraceError(f"{where}: {error}; {_NPY_FIX}") from None


def _inflate_head(archive: FileRef, member: npz.Member, length: int) -> bytes:
    """The first `length` bytes of a deflated member, inflating no more than needed."""
    decompressor = zlib.decompressobj(-zlib.MAX_WBITS)
    out = b""
    with archive.open() as file:
        file.seek(member.data_offset)
        remaining = member.compressed_size
        try:
            while len(out) < length and (remaining > 0 or decompressor.unconsumed_tail):
                chunk = decompressor.unconsumed_tail
                if not chunk:
                    chunk = file.read(min(65536, remaining))
                    remaining -= len(chunk)
                    if not chunk:
                        break
                out += decompressor.decompress(chunk, length - len(out))
                if decompressor.eof:
                    break
        except zlib.error as error:
            raise ValueError(f"not valid deflate data ({error})") from None
    return out


def _npz_metadata(archive: FileRef, member: npz.Member) -> Any:
    where = f"{archive.shown}: __metadata__"
    if member.size > MAX_METADATA_BYTES:
        raise TraceError(f"{where} is {member.size:,} bytes, more than the {MAX_METADATA_BYTES:,} allowed")
    header = _npz_header(archive, member, where, text=True)
    try:
        data = npz.inflate(archive, member) if member.method else archive.read(member.data_offset, member.size)
        if member.method == 0:
            npz.check_crc(data, member)
    except ValueError as error:
        raise TraceError(f"{where}: {error}; the .npz is damaged, write it again") from None
    codec = "utf-32-be" if header.dtype.byteorder == ">" else "utf-32-le"
    try:
        text = bytes(data[header.data_offset:]).decode(codec).rstrip("\x00")
        return boundedjson.loads(text, max_bytes=MAX_METADATA_BYTES, what="__metadata__")
    except (UnicodeDecodeError, ValueError) as error:
        raise TraceError(f"{where}: {error if isinstance(error, ValueError) else 'not text'}; store "
                         "np.array(json.dumps({...})) there") from None


def _crc(member: npz.Member, where: str, head: bytes, data: np.ndarray) -> None:
    """The stored member's CRC over its header bytes and its mapped data, a chunk at a time."""
    crc = zlib.crc32(head)
    for start in range(0, len(data), 1 << 26):
        crc = zlib.crc32(data[start:start + (1 << 26)], crc)
    if crc != member.crc:
        raise TraceError(f"{where} fails its CRC check (the .npz is damaged); write it again")


# --- directory of .npy files --------------------------------------------------------


def read_directory(path: Path) -> tuple[dict[str, TensorSource], Any, Any]:
    """(sources, metadata, declared dtypes) of a directory trace."""
    manifest_path = path / "manifest.json"
    if not os.path.lexists(manifest_path):
        raise TraceError(f"{path}: directory has no manifest.json; see docs/trace-format.md for the layout")
    manifest_file = FileRef.inside(path, "manifest.json", listed_in="the trace layout")
    if manifest_file.size > MAX_METADATA_BYTES:
        raise TraceError(f"{manifest_path}: is {manifest_file.size:,} bytes, more than the "
                         f"{MAX_METADATA_BYTES:,} a manifest may have")
    try:
        manifest = boundedjson.loads(manifest_file.read(0, manifest_file.size), max_bytes=MAX_METADATA_BYTES,
                                     what="manifest.json")
    except ValueError as error:
        raise TraceError(f"{manifest_path}: {error}; write the manifest as docs/trace-format.md shows") from None
    if not isinstance(manifest, dict):
        raise TraceError(f"{manifest_path}: is not a JSON object; see docs/trace-format.md")
    files = _manifest_files(manifest.get("tensors"), path, manifest_path)
    _check_count(len(files), manifest_path)
    sources = {}
    for name, filename in files.items():
        check_tensor_name(name, manifest_path)
        file = FileRef.inside(path, filename, listed_in=f"manifest.json (tensor '{name}')")
        sources[name] = _npy_source(file)
    metadata = manifest.get("metadata", {})
    if not isinstance(metadata, dict):
        raise TraceError(f"{manifest_path}: 'metadata' is not an object; write a JSON object of fields")
    if "format" in manifest:
        metadata = {**metadata, "format": _manifest_format(manifest["format"], metadata.get("format"), manifest_path)}
    return sources, metadata, check_dtypes(manifest.get("dtypes"), manifest_path, set(sources))


def _manifest_format(declared: Any, in_metadata: Any, manifest_path: Path) -> str:
    """The manifest's `format`: a string, and the same as its metadata's when both say one
    (trace.py checks that it is a format parity reads)."""
    if not isinstance(declared, str):
        raise TraceError(f"{manifest_path}: 'format' is not a string; write \"format\": \"parity-trace/2\"")
    if in_metadata is not None and in_metadata != declared:
        raise TraceError(f"{manifest_path}: 'format' says {printable(declared)[:40]!r} and metadata 'format' "
                         f"{printable(str(in_metadata))[:40]!r}; write one format, \"parity-trace/2\"")
    return declared


def _manifest_files(listed: Any, path: Path, manifest_path: Path) -> dict[Any, Any]:
    if listed is None:  # every .npy in the directory, named by its stem
        with os.scandir(path) as entries:
            names = sorted(entry.name for entry in entries if entry.name.endswith(".npy"))
        return {name.removesuffix(".npy"): name for name in names[:MAX_TENSORS + 1]}
    if isinstance(listed, list):
        if not all(isinstance(name, str) for name in listed):
            raise TraceError(f"{manifest_path}: 'tensors' lists something other than names; list names as strings")
        return {name: f"{name}.npy" for name in listed}
    if isinstance(listed, dict):
        return dict(listed)
    raise TraceError(f"{manifest_path}: 'tensors' is neither a list of names nor a name -> file object; "
                     "write one of the two (see docs/trace-format.md)")


def _npy_source(file: FileRef) -> TensorSource:
    try:
        header = npy.parse_header(file.read(0, min(file.size, npy.PREAMBLE_BYTES + npy.MAX_HEADER_BYTES)), file.size)
    except ValueError as error:
        raise TraceError(f"{file.shown}: {error}; {_NPY_FIX}") from None

    def load() -> np.ndarray:
        return _drop_batch_axis(mapped(file, header.data_offset, header.dtype, header.shape,
                                       fortran=header.fortran_order))

    def load_rows(count: int, rows_shape: tuple[int, ...]) -> np.ndarray:
        return mapped(file, header.data_offset, header.dtype, rows_shape)

    rows = None if header.fortran_order else head_of(load_rows, header.shape)
    return TensorSource(drop_batch_axis(header.shape), header.dtype_name, load, rows)


# --- shared -----------------------------------------------------------------------


def _check_count(count: int, path: Path) -> None:
    if count > MAX_TENSORS:
        raise TraceError(f"{path}: holds more than {MAX_TENSORS:,} tensors; split the trace")


def _drop_batch_axis(array: np.ndarray) -> np.ndarray:
    return array[0] if array.ndim >= 3 and array.shape[0] == 1 else array
