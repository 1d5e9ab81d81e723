"""What a GGUF header holds, as parity reads it (header.py reads it, checks.py checks it): the tensors'
types, shapes and offsets, the fields, and ggml's table of types."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class GGUFTensorInfo:
    name: str
    ggml_type: str               # e.g. 'Q4_1', 'F32'
    shape: tuple[int, ...]       # in ggml's order (fastest-varying first)
    type_id: int = -1            # ggml's number for the type
    offset: int = 0              # of its data, from the start of the data section

    def __repr__(self) -> str:
        return f"<GGUFTensorInfo {self.name} {self.ggml_type}{list(self.shape)}>"


@dataclass(frozen=True)
class GGUFHeader:
    version: int
    fields: dict[str, Any]       # scalars and strings as values; an array as ('array', element type, count)
    tensors: dict[str, GGUFTensorInfo]
    data_start: int = 0          # where the data section starts in the file (aligned)
    size: int = 0                # of the file

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


# ggml type -> (name, elements per block, bytes per block): ggml.h's table as llama.cpp 0.3.x (ggml 0.9) has it.
GGML_TYPES = {
    0: ("F32", 1, 4), 1: ("F16", 1, 2), 2: ("Q4_0", 32, 18), 3: ("Q4_1", 32, 20), 6: ("Q5_0", 32, 22),
    7: ("Q5_1", 32, 24), 8: ("Q8_0", 32, 34), 9: ("Q8_1", 32, 40), 10: ("Q2_K", 256, 84), 11: ("Q3_K", 256, 110),
    12: ("Q4_K", 256, 144), 13: ("Q5_K", 256, 176), 14: ("Q6_K", 256, 210), 15: ("Q8_K", 256, 292),
    16: ("IQ2_XXS", 256, 66), 17: ("IQ2_XS", 256, 74), 18: ("IQ3_XXS", 256, 98), 19: ("IQ1_S", 256, 50),
    20: ("IQ4_NL", 32, 18), 21: ("IQ3_S", 256, 110), 22: ("IQ2_S", 256, 82), 23: ("IQ4_XS", 256, 136),
    24: ("I8", 1, 1), 25: ("I16", 1, 2), 26: ("I32", 1, 4), 27: ("I64", 1, 8), 28: ("F64", 1, 8),
    29: ("IQ1_M", 256, 56), 30: ("BF16", 1, 2), 34: ("TQ1_0", 256, 54), 35: ("TQ2_0", 256, 66),
    39: ("MXFP4", 32, 17),
}
