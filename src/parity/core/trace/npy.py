"""The .npy format, parsed strictly: magic, version, header length, and a literal dict.

numpy's own reader parses the header with Python's tokenizer and `literal_eval`, whose
failures (tokenize.TokenError, SyntaxError, MemoryError on deep nesting) escape as
tracebacks, and its error for an object array advises `allow_pickle=True`. This reader
accepts only what `np.save` writes for a numeric array: the keys descr, fortran_order
and shape; a plain numeric descr (no objects, strings, structures, complex numbers);
at most MAX_DIMS dimensions of non-negative integers; and data whose size is exactly
what the header declares. The header is checked with `ast` node types, never evaluated.
"""

from __future__ import annotations

import ast
import re
import struct
from dataclasses import dataclass

import numpy as np

MAGIC = b"\x93NUMPY"
MAX_HEADER_BYTES = 10_000          # numpy's own limit for headers it reads safely
MAX_DIMS = 8                       # traces have at most 4 axes, plus a batch axis
PREAMBLE_BYTES = 12                # magic (6), version (2), header length (2 or 4)
_NUMERIC_DESCR = re.compile(r"[<>|=]?(?:[fiu][1248]|b1|\?)\Z")
_TEXT_DESCR = re.compile(r"[<>|=]?U\d{1,8}\Z")  # a 0-d string: the JSON an .npz's __metadata__ holds
_NAMES = {"f2": "float16", "f4": "float32", "f8": "float64", "i1": "int8", "i2": "int16", "i4": "int32",
          "i8": "int64", "u1": "uint8", "u2": "uint16", "u4": "uint32", "u8": "uint64", "b1": "bool", "?": "bool"}


@dataclass(frozen=True)
class NpyHeader:
    dtype: np.dtype
    fortran_order: bool
    shape: tuple[int, ...]
    data_offset: int               # bytes from the start of the .npy to its data
    nbytes: int                    # size of the data the header declares

    def __repr__(self) -> str:
        return f"<NpyHeader {self.dtype.str}{list(self.shape)} at {self.data_offset}>"

    @property
    def dtype_name(self) -> str:
        return _NAMES.get(self.dtype.str.lstrip("<>|="), str(self.dtype))


def parse_header(head: bytes, total_bytes: int, *, text: bool = False) -> NpyHeader:
    """The header at the start of `head` (the file's first bytes) of a .npy of `total_bytes`.
    With `text`, a 0-d unicode string is what is expected instead of numbers.
    Raises ValueError saying what is wrong."""
    if len(head) < 10 or head[:6] != MAGIC:
        raise ValueError("not a .npy array (no \\x93NUMPY magic at its start)")
    major, minor = head[6], head[7]
    if (major, minor) not in ((1, 0), (2, 0), (3, 0)):
        raise ValueError(f".npy version {major}.{minor} is not one parity reads (1.0, 2.0, 3.0)")
    width = 2 if major == 1 else 4
    if len(head) < 8 + width:
        raise ValueError(".npy header is cut short")
    (length,) = struct.unpack("<H" if width == 2 else "<I", head[8:8 + width])
    start = 8 + width
    if length > MAX_HEADER_BYTES or start + length > min(len(head), total_bytes):
        raise ValueError(f".npy header length {length} runs past the file or the {MAX_HEADER_BYTES}-byte limit")
    try:
        header_text = head[start:start + length].decode("latin1" if major < 3 else "utf-8")
    except UnicodeDecodeError:
        raise ValueError(".npy header is not UTF-8") from None
    descr, fortran_order, shape = _literal_dict(header_text, _TEXT_DESCR if text else _NUMERIC_DESCR)
    if text and shape != ():
        raise ValueError(f"holds an array of shape {list(shape)}, not one JSON string")
    dtype = np.dtype(descr)
    count = 1
    for size in shape:
        count *= size  # Python ints: no overflow
    nbytes = count * dtype.itemsize
    available = total_bytes - start - length
    if nbytes != available:
        raise ValueError(f"shape {list(shape)} of {descr} needs {nbytes:,} bytes of data, "
                         f"the file holds {available:,} after its header")
    return NpyHeader(dtype, fortran_order, shape, start + length, nbytes)


def _literal_dict(text: str, accepted: re.Pattern) -> tuple[str, bool, tuple[int, ...]]:
    """descr, fortran_order, shape from the header's dict literal, checked node by node."""
    try:
        node = ast.parse(text.strip(), mode="eval").body
    except (SyntaxError, ValueError, RecursionError, MemoryError):
        raise ValueError(".npy header is not a Python dict literal") from None
    if not isinstance(node, ast.Dict) or not all(isinstance(k, ast.Constant) for k in node.keys):
        raise ValueError(".npy header is not a dict of descr, fortran_order and shape")
    fields = {key.value: value for key, value in zip(node.keys, node.values)}
    if set(fields) != {"descr", "fortran_order", "shape"}:
        raise ValueError(f".npy header has keys {sorted(map(str, fields))}; expected descr, fortran_order, shape")
    descr = fields["descr"]
    if not (isinstance(descr, ast.Constant) and isinstance(descr.value, str) and accepted.match(descr.value)):
        shown = descr.value if isinstance(descr, ast.Constant) else "a structured or non-literal type"
        if isinstance(shown, str) and shown.lstrip("<>|=") == "O":
            raise ValueError("holds Python objects, which parity never unpickles; save a numeric array "
                             "(e.g. float32)")
        raise ValueError(f"dtype {str(shown)[:40]!r} is not a plain number type; parity compares float, int, "
                         "uint and bool arrays only (no objects, strings, structures or complex); save float32")
    order = fields["fortran_order"]
    if not (isinstance(order, ast.Constant) and isinstance(order.value, bool)):
        raise ValueError(".npy header's fortran_order is not True or False")
    shape = fields["shape"]
    if not isinstance(shape, ast.Tuple) or len(shape.elts) > MAX_DIMS:
        raise ValueError(f".npy header's shape is not a tuple of at most {MAX_DIMS} sizes")
    sizes = []
    for element in shape.elts:
        if not (isinstance(element, ast.Constant) and type(element.value) is int and element.value >= 0):
            raise ValueError(".npy header's shape holds something other than non-negative integers")
        sizes.append(element.value)
    return descr.value, order.value, tuple(sizes)
