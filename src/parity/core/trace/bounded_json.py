"""JSON from untrusted files, with limits checked before parsing.

A trace header, manifest or metadata entry is parsed only after its size is checked
and its nesting depth measured by a scan that does not recurse, so a document nested
a million levels deep is refused in linear time instead of raising RecursionError in
the parser or in whatever later walks the result. Errors are ValueError with a
message the caller prefixes with the file and field.
"""

from __future__ import annotations

import json
import re
from typing import Any

MAX_DEPTH = 32          # parity's own metadata nests 3 deep (config -> rope_scaling -> values)
_STRINGS = re.compile(rb'"(?:[^"\\]|\\.)*"', re.DOTALL)
_BRACKETS = re.compile(rb"[\[\]{}]")


def loads(data: bytes | str, *, max_bytes: int, what: str) -> Any:
    """Parse `data` (UTF-8 JSON) after checking its size and depth; ValueError says what is wrong."""
    raw = data.encode("utf-8", "surrogatepass") if isinstance(data, str) else bytes(data)
    if len(raw) > max_bytes:
        raise ValueError(f"{what} is {len(raw):,} bytes, more than the {max_bytes:,} allowed")
    depth = nesting_depth(raw)
    if depth > MAX_DEPTH:
        raise ValueError(f"{what} nests {depth} levels deep, more than the {MAX_DEPTH} allowed")
    raw = raw.removeprefix(b"\xef\xbb\xbf")  # a UTF-8 byte order mark, as some editors write
    if raw[:2] in (b"\xff\xfe", b"\xfe\xff"):
        raise ValueError(f"{what} is UTF-16; save it as UTF-8")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as error:
        raise ValueError(f"{what} is not UTF-8 (invalid byte at offset {error.start}); save it as UTF-8") from None
    try:
        return json.loads(text, parse_constant=_refuse_constant)
    except (json.JSONDecodeError, RecursionError) as error:
        raise ValueError(f"{what} is not JSON ({_short(error)})") from None


def nesting_depth(raw: bytes) -> int:
    """The deepest bracket nesting outside strings, found without recursion."""
    depth = deepest = 0
    for match in _BRACKETS.finditer(_STRINGS.sub(b'""', raw)):
        if match.group() in (b"[", b"{"):
            depth += 1
            deepest = max(deepest, depth)
        else:
            depth -= 1
    return deepest


def _refuse_constant(name: str) -> Any:
    raise json.JSONDecodeError(f"{name} is not JSON", name, 0)


def _short(error: Exception) -> str:
    return str(error).splitlines()[0][:120] if str(error) else type(error).__name__
