"""Reading a server's JSON answer field by field: each value checked for its type and range, and a fault one
line naming the field, what the server sent there, and what was expected."""

from __future__ import annotations

import math
import reprlib
from typing import Any

from parity.core.errors import CaptureError

MAX_TOKENS = 1_000_000
MAX_TOP = 1_000              # entries in one top_logprobs row
_LOGPROB_SLACK = 1e-3        # servers round; a log-probability a hair above 0 is still one
_SHOWN = 60


def field_of(container: dict, key: str, kind: type, where: str, path: str, fix: str, *, endpoint: str,
             shape: str) -> Any:
    """container[key], checked to be a `kind`; a CaptureError naming the field and what was sent otherwise."""
    if not isinstance(container, dict):
        named = "" if path == "the answer" else f"{path} = "
        raise CaptureError(f"{where} answered {named}{shown(container)}, not a JSON object; "
                           f"is it an OpenAI-compatible {endpoint} endpoint?")
    if key not in container:
        raise CaptureError(f"{where} answered JSON without {path}.{key}, so it is not a completion with logprobs "
                           f"(expected {shape}); {fix}")
    value = container[key]
    if not isinstance(value, kind):
        raise CaptureError(f"{where} answered {path}.{key} = {shown(value)}, expected a {_KIND_NAMES[kind]}; "
                           f"{fix}")
    return value


def item_of(items: list, index: int, kind: type, where: str, path: str, fix: str) -> Any:
    """items[index], checked to be a `kind`."""
    if len(items) <= index:
        raise CaptureError(f"{where} answered an empty {path} list; is the prompt accepted?")
    if not isinstance(items[index], kind):
        raise CaptureError(f"{where} answered {path}[{index}] = {shown(items[index])}, expected a {_KIND_NAMES[kind]}; "
                           f"{fix}")
    return items[index]


def log_probability(value) -> float | None:
    """`value` as a log-probability (a number <= 0, a hair above 0 read as 0), or None."""
    if not (is_int(value) or isinstance(value, float)):
        return None
    value = float(value)
    if math.isnan(value) or value > _LOGPROB_SLACK:
        return None
    return min(value, 0.0)


def is_unicode(text: str) -> bool:
    """Whether `text` encodes to UTF-8 (no lone surrogate escapes)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def shown(value) -> str:
    """What the server sent, on one line, shortened (reprlib stops at depth 3, so deep nesting is cheap)."""
    text = _REPR.repr(value)
    return text if len(text) <= _SHOWN else text[:_SHOWN] + "..."


_REPR = reprlib.Repr()
_REPR.maxlevel, _REPR.maxlist, _REPR.maxdict, _REPR.maxstring, _REPR.maxother = 3, 4, 4, _SHOWN, _SHOWN
_KIND_NAMES = {list: "JSON list", dict: "JSON object", str: "string"}
