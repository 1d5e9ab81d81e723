"""JSON text that reads well and writes fast: the outer levels indented, each record on one line.

`json.dumps(..., indent=2)` runs Python's own encoder, value by value: for a
report of a few hundred checkpoints that is most of the time `--json` takes.
Here only the first LEVELS levels of objects and arrays are laid out by hand;
everything below is written by the C encoder in one call, one line per record
(a checkpoint, a diagnosis), which also keeps `diff` and `grep` useful.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any, Callable

LEVELS = 2  # top-level object, and the arrays/objects directly in it
_COMPACT = json.JSONEncoder(allow_nan=False, separators=(", ", ": "))


def dumps(value: Any, *, indent: int = 2) -> str:
    """`value` as JSON (no NaN or infinity: they raise ValueError, as json.dumps(allow_nan=False) does)."""
    return "".join(pieces(value, indent=indent))


def dump(value: Any, write: Callable[[str], Any], *, indent: int = 2) -> None:
    """`value` as JSON, handed to `write` a record at a time."""
    for piece in pieces(value, indent=indent):
        write(piece)


def pieces(value: Any, *, indent: int = 2, level: int = 0) -> Iterator[str]:
    """`value` as JSON, a record at a time. An iterator inside the top-level object is written as an array
    as it yields, so a report of tens of thousands of records is never held whole."""
    inner, outer = " " * (indent * (level + 1)), " " * (indent * level)
    if isinstance(value, Iterator) and level < LEVELS:
        yield "["
        separator = "\n"
        for item in value:
            yield separator + inner
            yield from pieces(item, indent=indent, level=level + 1)
            separator = ",\n"
        yield "]" if separator == "\n" else "\n" + outer + "]"
    elif level >= LEVELS or not isinstance(value, (dict, list, tuple)) or not value:
        yield _COMPACT.encode(value)
    elif isinstance(value, dict):
        yield "{"
        for position, (key, item) in enumerate(value.items()):
            yield ("\n" if position == 0 else ",\n") + inner + _COMPACT.encode(str(key)) + ": "
            yield from pieces(item, indent=indent, level=level + 1)
        yield "\n" + outer + "}"
    elif not any(isinstance(item, (dict, list, tuple)) for item in value):
        yield _COMPACT.encode(value)   # an array of numbers or strings: one line
    else:
        yield from pieces(iter(value), indent=indent, level=level)
