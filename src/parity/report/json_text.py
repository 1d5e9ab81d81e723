"""JSON text that reads well and writes fast: the outer levels indented, each record on one line.

`json.dumps(..., indent=2)` runs Python's own encoder, value by value: for a
report of a few hundred checkpoints that is most of the time `--json` takes.
Here only the first LEVELS levels of objects and arrays are laid out by hand;
everything below is written by the C encoder in one call, one line per record
(a checkpoint, a diagnosis), which also keeps `diff` and `grep` useful.
"""

from __future__ import annotations

import json
from typing import Any

LEVELS = 2  # top-level object, and the arrays/objects directly in it
_COMPACT = json.JSONEncoder(allow_nan=False, separators=(", ", ": "))


def dumps(value: Any, *, indent: int = 2) -> str:
    """`value` as JSON (no NaN or infinity: they raise ValueError, as json.dumps(allow_nan=False) does)."""
    return _encode(value, 0, indent)


def _encode(value: Any, level: int, indent: int) -> str:
    if level >= LEVELS or not isinstance(value, (dict, list, tuple)) or not value:
        return _COMPACT.encode(value)
    inner, outer = " " * (indent * (level + 1)), " " * (indent * level)
    if isinstance(value, dict):
        items = [f"{inner}{_COMPACT.encode(str(key))}: {_encode(item, level + 1, indent)}"
                 for key, item in value.items()]
        return "{\n" + ",\n".join(items) + "\n" + outer + "}"
    if not any(isinstance(item, (dict, list, tuple)) for item in value):
        return _COMPACT.encode(value)   # an array of numbers or strings: one line
    return "[\n" + ",\n".join(inner + _encode(item, level + 1, indent) for item in value) + "\n" + outer + "]"
