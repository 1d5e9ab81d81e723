"""Trace: the tensors one forward pass produced, under canonical names.

Three on-disk forms are read (see docs/trace-format.md):
  - a `.safetensors` file whose `__metadata__` holds `format = parity-trace/1`;
  - an `.npz` file, metadata as JSON in an optional `__metadata__` entry;
  - a directory with `manifest.json` and one `.npy` file per tensor.
Only safetensors is written. Nothing is ever unpickled.

Tensors are held as numpy arrays; bfloat16 is widened to float32 on read (exactly)
and its original dtype kept in `Trace.dtypes`. A leading batch axis of size 1 is
dropped on read, so `[1, T, D]` and `[T, D]` are the same trace.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from parity.core.errors import OptionError, TraceError
from parity.core.files import write_atomically
from parity.core.names import in_flow_order, is_canonical, parse

FORMAT = "parity-trace/2"
# Versions read: /2 added checkpoint kinds (post norms, MoE routing, raw.<module>) and changed none.
READABLE_FORMATS = ("parity-trace/1", "parity-trace/2")
_JSON_KEYS = ("tokens", "config", "not_comparable", "architecture", "weight_rounding")

# safetensors dtype tag -> (numpy storage dtype, name parity reports)
_SAFETENSORS_DTYPES: dict[str, tuple[str, str]] = {
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
_NUMPY_TO_SAFETENSORS = {
    np.dtype("<f8"): "F64",
    np.dtype("<f4"): "F32",
    np.dtype("<f2"): "F16",
    np.dtype("<i8"): "I64",
    np.dtype("<i4"): "I32",
    np.dtype("<i2"): "I16",
    np.dtype("i1"): "I8",
    np.dtype("u1"): "U8",
    np.dtype("?"): "BOOL",
}
_MAX_HEADER_BYTES = 100 * 1024 * 1024


@dataclass(frozen=True)
class Trace:
    """Named tensors plus what is known of how they were produced."""

    tensors: Mapping[str, np.ndarray]
    metadata: Mapping[str, Any] = field(default_factory=dict)
    dtypes: Mapping[str, str] = field(default_factory=dict)  # name -> dtype as produced
    source: str = ""

    def __repr__(self) -> str:
        producer = self.metadata.get("producer", "unknown producer")
        return f"<Trace {len(self.tensors)} tensors from {producer}{' at ' + self.source if self.source else ''}>"

    def __contains__(self, name: str) -> bool:
        return name in self.tensors

    def __getitem__(self, name: str) -> np.ndarray:
        return self.tensors[name]

    @property
    def names(self) -> list[str]:
        """Tensor names in data-flow order."""
        return in_flow_order(self.tensors)

    @property
    def tokens(self) -> list[int] | None:
        return self.metadata.get("tokens")

    def dtype_of(self, name: str) -> str:
        return self.dtypes.get(name) or str(self.tensors[name].dtype)


def make_trace(tensors: Mapping[str, Any], metadata: Mapping[str, Any] | None = None, *, source: str = "") -> Trace:
    """Build a Trace from numpy arrays or torch tensors (bfloat16 included)."""
    arrays: dict[str, np.ndarray] = {}
    dtypes: dict[str, str] = {}
    for name, value in tensors.items():
        arrays[name], dtypes[name] = _to_numpy(value)
        arrays[name] = _drop_batch_axis(arrays[name])
    return Trace(tensors=arrays, metadata=_clean_metadata(metadata or {}), dtypes=dtypes, source=source)


def _to_numpy(value: Any) -> tuple[np.ndarray, str]:
    if isinstance(value, np.ndarray):
        return value, str(value.dtype)
    if type(value).__module__.startswith("torch"):
        tensor = value.detach().cpu()
        dtype = str(tensor.dtype).removeprefix("torch.")
        if dtype == "bfloat16":
            return tensor.float().numpy(), dtype  # exact: bf16 is a truncated f32
        return tensor.numpy(), dtype
    array = np.asarray(value)
    return array, str(array.dtype)


def _drop_batch_axis(array: np.ndarray) -> np.ndarray:
    return array[0] if array.ndim >= 3 and array.shape[0] == 1 else array


def _clean_metadata(metadata: Mapping[str, Any]) -> dict[str, Any]:
    return {key: value for key, value in metadata.items() if value is not None}


# --- Reading --------------------------------------------------------------------


def load_trace(path: str | Path) -> Trace:
    """Read a trace in any of the three forms, or raise TraceError saying how to fix it."""
    path = Path(path)
    if not path.exists():
        raise TraceError(f"{path}: no such file or directory")
    if path.is_dir():
        trace = _read_directory(path)
    elif path.suffix == ".npz":
        trace = _read_npz(path)
    elif path.suffix == ".npy":
        raise TraceError(
            f"{path}: a single .npy file is one tensor, not a trace; put it in a directory "
            "with manifest.json (see docs/trace-format.md)"
        )
    else:
        trace = _read_safetensors(path)
    _check_is_trace(trace, path)
    return trace


def _check_is_trace(trace: Trace, path: Path) -> None:
    declared = trace.metadata.get("format")
    if declared not in READABLE_FORMATS and trace.tensors and not any(is_canonical(name) for name in trace.tensors):
        example = ", ".join(sorted(trace.tensors)[:3])
        raise TraceError(
            f"{path}: not a parity trace: no canonical checkpoint names (found {example}, ...; "
            "expected names like 'embed', 'layers.0.q', 'logits'); is this a weights file? "
            "See docs/trace-format.md"
        )
    if declared is not None and declared not in READABLE_FORMATS:
        raise TraceError(f"{path}: format is '{declared}', expected '{FORMAT}' (or an older "
                         f"{', '.join(READABLE_FORMATS[:-1])}); see docs/trace-format.md")


def _read_safetensors(path: Path) -> Trace:
    data = path.read_bytes()
    if len(data) < 8:
        raise TraceError(f"{path}: not a safetensors file (too short); expected a parity trace")
    (header_size,) = struct.unpack("<Q", data[:8])
    if header_size > min(_MAX_HEADER_BYTES, len(data) - 8):
        raise TraceError(f"{path}: not a safetensors file (bad header length); expected a parity trace")
    try:
        header = json.loads(data[8 : 8 + header_size])
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise TraceError(f"{path}: not a safetensors file (header is not JSON); expected a parity trace") from None
    if not isinstance(header, dict):
        raise TraceError(f"{path}: not a safetensors file (header is not an object)")
    body = memoryview(data)[8 + header_size :]
    metadata = _parse_metadata(header.pop("__metadata__", {}) or {}, path)
    tensors, dtypes = {}, {}
    for name, entry in header.items():
        tensors[name], dtypes[name] = _safetensors_entry(name, entry, body, path)
    return Trace(tensors=tensors, metadata=metadata, dtypes=dtypes, source=str(path))


def _safetensors_entry(name: str, entry: Any, body: memoryview, path: Path) -> tuple[np.ndarray, str]:
    try:
        tag, shape, (begin, end) = entry["dtype"], list(entry["shape"]), entry["data_offsets"]
    except (TypeError, KeyError, ValueError):
        raise TraceError(f"{path}: tensor '{name}' has a malformed header entry") from None
    if tag not in _SAFETENSORS_DTYPES:
        raise TraceError(
            f"{path}: tensor '{name}' has dtype {tag}, which parity does not read; "
            f"write one of {', '.join(_SAFETENSORS_DTYPES)}"
        )
    storage, dtype = _SAFETENSORS_DTYPES[tag]
    count = int(np.prod(shape, dtype=np.int64))
    if not (0 <= begin <= end <= len(body)) or end - begin != count * np.dtype(storage).itemsize:
        raise TraceError(f"{path}: tensor '{name}' data offsets do not match its shape {shape} and dtype {tag}")
    array = np.frombuffer(body[begin:end], dtype=storage).reshape(shape)
    if dtype == "bfloat16":
        array = (array.astype(np.uint32) << 16).view(np.float32)
    return _drop_batch_axis(array), dtype


def _parse_metadata(raw: Mapping[str, Any], path: Path) -> dict[str, Any]:
    metadata: dict[str, Any] = {}
    for key, value in raw.items():
        if key in _JSON_KEYS and isinstance(value, str):
            try:
                value = json.loads(value)
            except json.JSONDecodeError:
                raise TraceError(f"{path}: metadata '{key}' is not valid JSON: {value[:60]!r}") from None
        metadata[key] = value
    tokens = metadata.get("tokens")
    if tokens is not None and not (isinstance(tokens, list) and all(isinstance(t, int) for t in tokens)):
        raise TraceError(f"{path}: metadata 'tokens' must be a JSON list of integers")
    return metadata


def _read_npz(path: Path) -> Trace:
    try:
        archive = np.load(path, allow_pickle=False)
    except (ValueError, OSError) as error:
        raise TraceError(f"{path}: not a readable .npz file ({error})") from None
    with archive:
        metadata = {}
        if "__metadata__" in archive.files:
            metadata = _parse_json_text(archive["__metadata__"], path, "__metadata__")
        tensors = {name: _load_array(archive, name, path) for name in archive.files if name != "__metadata__"}
    return make_trace(tensors, _parse_metadata(metadata, path), source=str(path))


def _load_array(archive, name: str, path: Path) -> np.ndarray:
    try:
        return archive[name]
    except ValueError:
        raise TraceError(f"{path}: entry '{name}' holds Python objects, which parity never unpickles") from None


def _parse_json_text(value: Any, path: Path, what: str) -> dict:
    try:
        parsed = json.loads(str(np.asarray(value).item()) if not isinstance(value, str) else value)
    except (json.JSONDecodeError, ValueError):
        raise TraceError(f"{path}: {what} is not a JSON object") from None
    if not isinstance(parsed, dict):
        raise TraceError(f"{path}: {what} is not a JSON object")
    return parsed


def _read_directory(path: Path) -> Trace:
    manifest_path = path / "manifest.json"
    if not manifest_path.exists():
        raise TraceError(f"{path}: directory has no manifest.json; see docs/trace-format.md for the layout")
    manifest = _parse_json_text(manifest_path.read_text(encoding="utf-8"), manifest_path, "manifest.json")
    files = _manifest_files(manifest, path)
    tensors = {}
    for name, filename in files.items():
        file = path / filename
        if not file.exists():
            raise TraceError(f"{manifest_path}: tensor '{name}' names {filename}, which does not exist")
        try:
            tensors[name] = np.load(file, allow_pickle=False)
        except ValueError as error:
            raise TraceError(f"{file}: not a readable .npy array ({error}); parity never unpickles") from None
    metadata = dict(manifest.get("metadata", {}))
    if "format" in manifest:
        metadata.setdefault("format", manifest["format"])
    trace = make_trace(tensors, _parse_metadata(metadata, manifest_path), source=str(path))
    declared = manifest.get("dtypes", {})
    return Trace(trace.tensors, trace.metadata, {**trace.dtypes, **declared}, trace.source)


def _manifest_files(manifest: dict, path: Path) -> dict[str, str]:
    listed = manifest.get("tensors")
    if listed is None:  # every .npy in the directory, named by its stem
        return {file.stem: file.name for file in sorted(path.glob("*.npy"))}
    if isinstance(listed, list):
        return {name: f"{name}.npy" for name in listed}
    if isinstance(listed, dict):
        return dict(listed)
    raise TraceError(f"{path / 'manifest.json'}: 'tensors' must be a list of names or a name -> file object")


# --- Writing --------------------------------------------------------------------


def save_trace(trace: Trace, path: str | Path, *, overwrite: bool = False) -> Path:
    """Write `trace` as a parity-trace/2 safetensors file. Refuses to replace a file unless told."""
    path = Path(path)
    if path.suffix != ".safetensors":
        raise OptionError(f"{path}: traces are written as .safetensors; name the output '*.safetensors'")
    header: dict[str, Any] = {"__metadata__": _metadata_strings(trace.metadata)}
    chunks, offset = [], 0
    for name in trace.names:
        array, tag = _storage(trace.tensors[name], trace.dtypes.get(name))
        raw = np.ascontiguousarray(array).tobytes()
        header[name] = {"dtype": tag, "shape": list(array.shape), "data_offsets": [offset, offset + len(raw)]}
        chunks.append(raw)
        offset += len(raw)
    encoded = json.dumps(header, separators=(",", ":")).encode()
    encoded += b" " * (-len(encoded) % 8)  # the body starts 8-byte aligned

    def write(file) -> None:
        file.write(struct.pack("<Q", len(encoded)))
        file.write(encoded)
        for raw in chunks:
            file.write(raw)

    return write_atomically(path, write, overwrite=overwrite)


def _storage(array: np.ndarray, dtype: str | None) -> tuple[np.ndarray, str]:
    """The array as stored, and its safetensors tag; bfloat16 is written back as bfloat16."""
    if dtype == "bfloat16" and array.dtype == np.float32:
        return (array.view(np.uint32) >> 16).astype("<u2"), "BF16"
    array = array.astype(array.dtype.newbyteorder("<"), copy=False)
    if array.dtype not in _NUMPY_TO_SAFETENSORS:
        raise OptionError(f"cannot store a tensor of dtype {array.dtype} in a trace; cast it to float32")
    return array, _NUMPY_TO_SAFETENSORS[array.dtype]


def _metadata_strings(metadata: Mapping[str, Any]) -> dict[str, str]:
    strings = {"format": FORMAT}
    for key, value in metadata.items():
        if key == "format" or value is None:
            continue
        strings[key] = value if isinstance(value, str) else json.dumps(value)
    return strings


def layer_count(trace: Trace) -> int:
    """Number of layers the trace covers (highest layer index + 1)."""
    layers = [c.layer for c in map(parse, trace.tensors) if c is not None and c.layer is not None]
    return max(layers) + 1 if layers else 0
