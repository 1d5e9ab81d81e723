"""Trace: the tensors one forward pass produced, under canonical names.

Three on-disk forms are read (see docs/trace-format.md):
  - a `.safetensors` file whose `__metadata__` holds `format = parity-trace/2` (or /1);
  - an `.npz` file, metadata as JSON in an optional `__metadata__` entry;
  - a directory with `manifest.json` and one `.npy` file per tensor.
Only safetensors is written. Nothing is ever unpickled.

Tensors are numpy arrays; a loaded trace reads each when it is first looked up
(core/trace/readers.py checks every header first, core/trace/lazy.py defers the data). bfloat16 is widened to float32 on read (exactly)
and its original dtype kept in `Trace.dtypes`. A leading batch axis of size 1 is
dropped on read, so `[1, T, D]` and `[T, D]` are the same trace.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from parity.core.trace import readers
from parity.core.errors import OptionError, TraceError
from parity.core.trace.lazy import LazyTensors
from parity.core.names import RAW_PREFIX, in_flow_order, is_canonical, parse
from parity.core.printable import printable
from parity.core.trace.metadata import parse_metadata

FORMAT = "parity-trace/2"
# Versions read: /2 added checkpoint kinds (post norms, MoE routing, raw.<module>) and changed none.
READABLE_FORMATS = ("parity-trace/1", "parity-trace/2")
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

    def head(self, name: str, count: int) -> np.ndarray:
        """The first `count` rows of a tensor; a loaded trace reads only those where it can."""
        head = getattr(self.tensors, "head", None)
        return head(name, count) if head is not None else self.tensors[name][:count]

    def shape_of(self, name: str) -> tuple[int, ...]:
        """The tensor's shape, without reading its data when the trace was loaded from disk."""
        shape_of = getattr(self.tensors, "shape_of", None)
        return shape_of(name) if shape_of is not None else tuple(self.tensors[name].shape)


def make_trace(tensors: Mapping[str, Any], metadata: Mapping[str, Any] | None = None, *, source: str = "") -> Trace:
    """Build a Trace from numpy arrays or torch tensors (bfloat16 included).
    A loaded trace's lazy tensors stay lazy."""
    if isinstance(tensors, LazyTensors):
        return Trace(tensors=tensors, metadata=clean_metadata(metadata or {}), dtypes=tensors.dtypes(), source=source)
    arrays: dict[str, np.ndarray] = {}
    dtypes: dict[str, str] = {}
    for name, value in tensors.items():
        arrays[name], dtypes[name] = as_array(value)
    return Trace(tensors=arrays, metadata=clean_metadata(metadata or {}), dtypes=dtypes, source=source)


def with_arrays(trace: Trace, arrays: dict[str, np.ndarray]) -> Trace:
    """`trace` with `arrays` in place of (or beside) its tensors of those names, their dtypes as given (a loaded
    trace's other tensors stay lazy)."""
    tensors = trace.tensors
    held = tensors.with_arrays(arrays) if hasattr(tensors, "with_arrays") else {**tensors, **arrays}
    return dataclasses.replace(trace, tensors=held, dtypes={**trace.dtypes, **{name: str(array.dtype)
                                                                              for name, array in arrays.items()}})


def as_array(value: Any) -> tuple[np.ndarray, str]:
    """A numpy array or torch tensor as a trace holds it: a numpy array (bfloat16 widened to float32,
    a leading batch axis of 1 dropped) and the dtype it was produced in."""
    array, dtype = _to_numpy(value)
    return _drop_batch_axis(array), dtype


def _to_numpy(value: Any) -> tuple[np.ndarray, str]:
    if isinstance(value, np.ndarray):
        return value, str(value.dtype)
    if type(value).__module__.startswith("torch"):
        tensor = _plain(value).detach().cpu()
        dtype = str(tensor.dtype).removeprefix("torch.")
        if dtype == "bfloat16":
            return tensor.float().numpy(), dtype  # exact: bf16 is a truncated f32
        return tensor.numpy(), dtype
    array = np.asarray(value)
    return array, str(array.dtype)


def _plain(tensor: Any) -> Any:
    """A torch tensor subclass that numpy cannot read (a quantized build's weight) as the values it stands for."""
    import torch

    if getattr(tensor, "is_quantized", False):      # PyTorch's own quantized tensor
        return tensor.dequantize()
    if type(tensor) in (torch.Tensor, torch.nn.Parameter):
        return tensor
    while hasattr(tensor, "original_weight_tensor"):  # torchao's activation-quantizing wrapper
        tensor = tensor.original_weight_tensor
    return tensor if type(tensor).dequantize is torch.Tensor.dequantize else tensor.dequantize()


def _drop_batch_axis(array: np.ndarray) -> np.ndarray:
    return array[0] if array.ndim >= 3 and array.shape[0] == 1 else array


def clean_metadata(metadata: Mapping[str, Any]) -> dict[str, Any]:
    """Metadata without its empty (None) entries, as a trace keeps it."""
    return {key: value for key, value in metadata.items() if value is not None}


# --- Reading --------------------------------------------------------------------


# Files torch writes with pickle inside (torch.save, torch.export.save): named, never opened.
PICKLED_SUFFIXES = {".pt2": "torch.export.save", ".pt": "torch.save", ".pth": "torch.save",
                    ".ckpt": "a checkpoint of torch.save"}


def load_trace(path: str | Path) -> Trace:
    """Read a trace in any of the three forms, or raise TraceError saying how to fix it.

    Headers are read and checked now (core/trace/readers.py); each tensor's data is read
    when it is first looked up (`trace.tensors` is a LazyTensors mapping)."""
    path = Path(path)
    if not os.path.lexists(path):
        raise TraceError(f"{path}: no such file or directory")
    declared: dict[str, str] = {}
    if path.is_dir():
        sources, raw_metadata, declared = readers.read_directory(path)
        where = path / "manifest.json"
    elif path.suffix == ".npy":
        raise TraceError(
            f"{path}: a single .npy file is one tensor, not a trace; put it in a directory "
            "with manifest.json (see docs/trace-format.md)"
        )
    elif path.suffix in PICKLED_SUFFIXES:
        raise TraceError(
            f"{path}: a PyTorch archive ({PICKLED_SUFFIXES[path.suffix]}), which may hold pickled objects and "
            "parity never loads; load it in a factory of your own (def build(): return torch.export.load(PATH), "
            "or the model torch.load gives) and check FILE.py:build, or write a trace (docs/trace-format.md)"
        )
    else:
        sources, raw_metadata = (readers.read_npz if path.suffix == ".npz" else readers.read_safetensors)(path)
        where = path
    tensors = LazyTensors(sources)
    metadata = clean_metadata(parse_metadata(raw_metadata, where))
    trace = Trace(tensors=tensors, metadata=metadata, dtypes={**tensors.dtypes(), **declared}, source=str(path))
    _check_is_trace(trace, path)
    return trace


def _check_is_trace(trace: Trace, path: Path) -> None:
    if not trace.tensors:
        raise TraceError(f"{path}: the trace holds no tensors, so there is nothing to compare; "
                         "write at least one checkpoint (see docs/trace-format.md)")
    if not any(is_canonical(name) or name.startswith(RAW_PREFIX) for name in trace.tensors):
        example = ", ".join(sorted(trace.tensors)[:3])
        raise TraceError(
            f"{path}: not a parity trace: no canonical checkpoint names (found {example}, ...; "
            "expected names like 'embed', 'layers.0.q', 'logits'); is this a weights file? "
            "See docs/trace-format.md"
        )
    declared = trace.metadata.get("format")
    if declared is not None and declared not in READABLE_FORMATS:
        raise TraceError(f"{path}: format is {printable(declared)[:40]!r}, expected '{FORMAT}' (or an older "
                         f"{', '.join(READABLE_FORMATS[:-1])}); see docs/trace-format.md")


# --- Writing --------------------------------------------------------------------


def save_trace(trace: Trace, path: str | Path, *, overwrite: bool = False) -> Path:
    """Write `trace` as a parity-trace/2 safetensors file. Refuses to replace a file unless told.
    Each tensor is written from where it lies (no second copy of the trace in memory)."""
    from parity.core.trace.writer import trace_file

    metadata = metadata_strings(trace.metadata)
    with trace_file(path, overwrite=overwrite, expected_tensors=len(trace.names),
                    metadata_bytes=len(json.dumps(metadata))) as writer:
        for name in trace.names:
            writer.add(name, *storage(trace.tensors[name], trace.dtypes.get(name)))
        writer.finish(metadata)
    return Path(path)


def storage(array: np.ndarray, dtype: str | None) -> tuple[np.ndarray, str]:
    """The array as stored, and its safetensors tag; bfloat16 is written back as bfloat16."""
    if dtype == "bfloat16" and array.dtype == np.float32:
        return (array.view(np.uint32) >> 16).astype("<u2"), "BF16"
    array = array.astype(array.dtype.newbyteorder("<"), copy=False)
    if array.dtype not in _NUMPY_TO_SAFETENSORS:
        raise OptionError(f"cannot store a tensor of dtype {array.dtype} in a trace; cast it to float32")
    return array, _NUMPY_TO_SAFETENSORS[array.dtype]


def stored(value: Any) -> tuple[np.ndarray, str]:
    """`storage(*as_array(value))` without a copy where there is nothing to convert: a bfloat16 torch tensor's
    bits are what the file holds, read as uint16 in place (through float32 they took three temporaries, 5x the
    tensor: 4.8 GB for a port's bfloat16 logits at T=8,192)."""
    if type(value).__module__.startswith("torch") and str(value.dtype) == "torch.bfloat16":
        import torch

        bits = value.detach().cpu().contiguous().view(torch.int16).numpy().view(np.uint16)
        return _drop_batch_axis(bits.astype("<u2", copy=False)), "BF16"
    return storage(*as_array(value))


def metadata_strings(metadata: Mapping[str, Any]) -> dict[str, str]:
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
