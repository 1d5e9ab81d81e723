"""How far a GGUF's weights are from the reference model's: each tensor's rounding, measured.

When the reference is the original model directory and the candidate a GGUF made
from it, the two do not compute with the same weights: F16, BF16 and quantized
GGUFs store them rounded. For each GGUF tensor the reference also holds, this
measures the rounding actually in the file (the dequantized tensor against the
reference's, rel_l2) and what that format gives by itself (the reference's
tensor quantized and dequantized by gguf-py, llama.cpp's own quantizer). A file
whose tensors are as far as their format makes them is rounded, not wrong.

The converter stores tensors in its own layout: rows of Llama-style q/k
projections permuted within each head, GPT-2's Conv1D weights transposed,
Gemma's RMSNorm weights as 1 + w. Each
tensor is compared in the layout that brings it closest, among those.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

EXACT_TYPES = {"F32", "F64"}


@dataclass(frozen=True)
class TensorRounding:
    """One GGUF tensor's rounding against the reference's tensor."""

    name: str                 # GGUF name, e.g. 'blk.0.attn_q.weight'
    ggml_type: str            # e.g. 'Q8_0'
    rel_l2: float             # measured: the file's tensor against the reference's
    expected_rel_l2: float    # what rounding the reference's tensor to this type gives

    def __repr__(self) -> str:
        return f"<TensorRounding {self.name} {self.ggml_type} {self.rel_l2:.3g} (format {self.expected_rel_l2:.3g})>"

    def as_dict(self) -> dict:
        return {"name": self.name, "type": self.ggml_type, "rel_l2": self.rel_l2,
                "expected_rel_l2": self.expected_rel_l2}


def _rel_l2(reference: np.ndarray, candidate: np.ndarray) -> float:
    norm = float(np.linalg.norm(reference))
    return float(np.linalg.norm(candidate - reference)) / norm if norm else float(np.linalg.norm(candidate))


def _layouts(tensor: np.ndarray, heads: tuple[int, ...]):
    """The reference tensor in each layout the converter may have stored it in (Gemma's norms as 1 + w)."""
    yield tensor
    if tensor.ndim == 1:
        yield tensor + 1
    if tensor.ndim == 2:
        yield tensor.T
    for count in heads:
        if count and tensor.ndim >= 1 and tensor.shape[0] % (2 * count) == 0:
            rest = tensor.shape[1:]
            yield tensor.reshape(count, 2, tensor.shape[0] // count // 2, *rest).swapaxes(1, 2).reshape(tensor.shape)


def _round_trip(tensor: np.ndarray, ggml_type: str) -> np.ndarray | None:
    """The tensor as this GGUF type stores it (gguf-py's quantizer), None when gguf-py cannot."""
    import gguf

    kind = gguf.GGMLQuantizationType[ggml_type]
    try:
        return gguf.quants.dequantize(gguf.quants.quantize(tensor.astype(np.float32), kind), kind)
    except (NotImplementedError, ValueError, TypeError):
        return None


def measure_weight_rounding(model, gguf_path: str | Path) -> tuple[TensorRounding, ...]:
    """Each GGUF tensor the reference `model` (a transformers model) also holds, in GGUF file order."""
    import gguf

    reader = gguf.GGUFReader(str(gguf_path))
    arch = field_text(reader, "general.architecture")
    arches = {name: key for key, name in gguf.MODEL_ARCH_NAMES.items()}
    blocks = field_number(reader, f"{arch}.block_count")
    if arch not in arches or blocks is None:
        return ()
    heads = tuple(h for h in (field_number(reader, f"{arch}.attention.head_count"),
                              field_number(reader, f"{arch}.attention.head_count_kv")) if h)
    name_map = gguf.get_tensor_name_map(arches[arch], blocks)
    parameters = {}
    for name, parameter in model.named_parameters():
        gguf_name = name_map.get_name(name, try_suffixes=(".weight", ".bias"))
        if gguf_name is not None:
            parameters.setdefault(gguf_name, parameter)
    results = []
    for tensor in reader.tensors:
        parameter = parameters.get(tensor.name)
        if parameter is None:
            continue
        stored = gguf.quants.dequantize(tensor.data, tensor.tensor_type).astype(np.float64)
        original = parameter.detach().double().cpu().numpy()
        candidates = [layout for layout in _layouts(original, heads) if layout.size == stored.size]
        if not candidates:
            continue
        measured, aligned = min(((_rel_l2(layout.reshape(stored.shape), stored), layout.reshape(stored.shape))
                                 for layout in candidates), key=lambda pair: pair[0])
        type_name = tensor.tensor_type.name
        expected = 0.0
        if type_name not in EXACT_TYPES:
            rounded = _round_trip(aligned, type_name)
            expected = _rel_l2(aligned, rounded) if rounded is not None else float("nan")
        results.append(TensorRounding(tensor.name, type_name, measured, expected))
    return tuple(results)


def field_text(reader, key: str) -> str | None:
    """A GGUF string field's value, or None."""
    field = reader.fields.get(key)
    return bytes(field.parts[field.data[0]]).decode() if field is not None else None


def field_number(reader, key: str) -> int | None:
    """A GGUF integer field's value, or None."""
    field = reader.fields.get(key)
    return int(field.parts[field.data[0]][0]) if field is not None else None
