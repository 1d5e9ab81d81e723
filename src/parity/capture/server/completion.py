"""Reading an OpenAI completions answer (echo + logprobs) and checking every field it holds.

A server is untrusted input: each field read is checked for its type and range,
and a fault is one line naming the field, what the server sent there, and what
was expected. The shape read:

    {"choices": [{"text": str,
                  "logprobs": {"tokens": [str, ...],
                               "text_offset": [int, ...],         0 <= offset <= len(text), non-decreasing
                               "token_logprobs": [float|null, ...],   <= 0 (a log-probability)
                               "top_logprobs": [{str: float}|null, ...] | null}}]}

What the check then needs of these fields (tokens that tile the text, a top-k row
per token, ...) is comparable.py's.
"""

from __future__ import annotations

import math
import reprlib
from typing import Any

from parity.capture.server.comparable import check_comparable, check_unicode
from parity.core.errors import CaptureError
from parity.core.sequence import CandidateTokens

MAX_TOKENS = 1_000_000
MAX_TOP = 1_000              # entries in one top_logprobs row
_LOGPROB_SLACK = 1e-3        # servers round; a log-probability a hair above 0 is still one
_SHOWN = 60
_FIX = "check that it is an OpenAI-compatible /v1/completions endpoint that supports echo and logprobs"
_SHAPE = "choices[0].logprobs with tokens, text_offset, token_logprobs"


def parse_completion(answer: Any, prompt: str, where: str, *, max_tokens: int | None = None) -> CandidateTokens:
    """The echoed prompt and continuation with their log-probabilities; raises CaptureError naming the field,
    or saying why the answer cannot be compared."""
    choice = item_of(field_of(answer, "choices", list, where, "the answer"), 0, dict, where, "choices")
    text = field_of(choice, "text", str, where, "choices[0]")
    check_unicode(text, where, "choices[0].text")
    if not text.startswith(prompt):
        raise CaptureError(f"{where} did not echo the prompt (its text starts {shown(text)}); parity needs 'echo' "
                           "to compare prompt positions (a server that gives log-probabilities for chat alone is "
                           "checked at its /v1/chat/completions address)")
    logprobs = field_of(choice, "logprobs", dict, where, "choices[0]",
                      hint="does the server support logprobs with echo?")
    path = "choices[0].logprobs"
    pieces = _list_of(logprobs, "tokens", where, path, _piece)
    offsets = _list_of(logprobs, "text_offset", where, path, _offset(len(text)))
    token_logprobs = _list_of(logprobs, "token_logprobs", where, path, _logprob)
    top = logprobs.get("top_logprobs")
    top_logprobs = (tuple([None] * len(pieces)) if top is None
                    else _list_of(logprobs, "top_logprobs", where, path, _top_row))
    lengths = {len(pieces), len(offsets), len(token_logprobs), len(top_logprobs)}
    if len(lengths) != 1:
        raise CaptureError(f"{where} answered logprobs lists of different lengths (tokens {len(pieces)}, text_offset "
                           f"{len(offsets)}, token_logprobs {len(token_logprobs)}, top_logprobs {len(top_logprobs)}); "
                           f"{_FIX}")
    descending = next((i for i in range(1, len(offsets)) if offsets[i] < offsets[i - 1]), None)
    if descending is not None:
        raise CaptureError(f"{where} answered text_offset[{descending}] = {offsets[descending]}, before the offset of "
                           f"the token ahead of it ({offsets[descending - 1]}); offsets must not decrease: {_FIX}")
    first_generated = next((i for i, offset in enumerate(offsets) if offset >= len(prompt)), len(pieces))
    candidate = CandidateTokens(text, pieces, offsets, token_logprobs, top_logprobs, first_generated)
    return check_comparable(candidate, prompt, where, finish_reason=choice.get("finish_reason"), max_tokens=max_tokens)


# --- one field ------------------------------------------------------------------


def field_of(container: dict, key: str, kind: type, where: str, path: str, hint: str = "", *,
             endpoint: str = "/v1/completions", shape: str = _SHAPE) -> Any:
    """container[key], checked to be a `kind`; a CaptureError naming the field and what was sent otherwise."""
    if not isinstance(container, dict):
        named = "" if path == "the answer" else f"{path} = "
        raise CaptureError(f"{where} answered {named}{shown(container)}, not a JSON object; "
                           f"is it an OpenAI-compatible {endpoint} endpoint?")
    if key not in container:
        raise CaptureError(f"{where} answered JSON without {path}.{key}, so it is not a completion with logprobs "
                           f"(expected {shape}); "
                           + (hint or _FIX))
    value = container[key]
    if not isinstance(value, kind):
        raise CaptureError(f"{where} answered {path}.{key} = {shown(value)}, expected a {_KIND_NAMES[kind]}; "
                           + (hint or _FIX))
    return value


def item_of(items: list, index: int, kind: type, where: str, path: str, fix: str = _FIX) -> Any:
    """items[index], checked to be a `kind`."""
    if len(items) <= index:
        raise CaptureError(f"{where} answered an empty {path} list; is the prompt accepted?")
    if not isinstance(items[index], kind):
        raise CaptureError(f"{where} answered {path}[{index}] = {shown(items[index])}, expected a {_KIND_NAMES[kind]}; "
                           f"{fix}")
    return items[index]


def _list_of(container: dict, key: str, where: str, path: str, check) -> tuple:
    items = field_of(container, key, list, where, path)
    if len(items) > MAX_TOKENS:
        raise CaptureError(f"{where} answered {len(items):,} entries in {path}.{key}, more than {MAX_TOKENS:,}; "
                           "ask for fewer tokens with -n")
    checked = []
    for index, item in enumerate(items):
        value, expected = check(item)
        if expected:
            raise CaptureError(f"{where} answered {path}.{key}[{index}] = {shown(item)}, expected {expected}; {_FIX}")
        checked.append(value)
    return tuple(checked)


def _piece(item) -> tuple[Any, str]:
    if not isinstance(item, str):
        return None, "a string (the token's text)"
    return (item, "") if _is_unicode(item) else (None, "Unicode text (it holds a lone surrogate escape)")


def _offset(text_length: int):
    def check(item) -> tuple[Any, str]:
        if _is_int(item) and 0 <= item <= text_length:
            return item, ""
        return None, f"an integer character offset from 0 to {text_length} (the length of the answer's text)"

    return check


def _logprob(item) -> tuple[Any, str]:
    if item is None:
        return None, ""
    value = log_probability(item)
    return (value, "") if value is not None else (None, "a log-probability (a number <= 0) or null")


def _top_row(item) -> tuple[Any, str]:
    if item is None:
        return None, ""
    expected = f"null or an object of at most {MAX_TOP} token text -> log-probability (a number <= 0)"
    if not isinstance(item, dict) or len(item) > MAX_TOP:
        return None, expected
    row = {}
    for piece, value in item.items():
        if not _is_unicode(piece):
            return None, f"{expected}; its entry {shown(piece)} holds a lone surrogate escape"
        logprob = log_probability(value)
        if logprob is None:
            return None, f"{expected}; its entry {shown(piece)} is {shown(value)}"
        row[piece] = logprob
    return row, ""


def log_probability(value) -> float | None:
    """`value` as a log-probability (a number <= 0, a hair above 0 read as 0), or None."""
    if not (_is_int(value) or isinstance(value, float)):
        return None
    value = float(value)
    if math.isnan(value) or value > _LOGPROB_SLACK:
        return None
    return min(value, 0.0)


def _is_unicode(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def shown(value) -> str:
    """What the server sent, on one line, shortened (reprlib stops at depth 3, so deep nesting is cheap)."""
    text = _REPR.repr(value)
    return text if len(text) <= _SHOWN else text[:_SHOWN] + "..."


_REPR = reprlib.Repr()
_REPR.maxlevel, _REPR.maxlist, _REPR.maxdict, _REPR.maxstring, _REPR.maxother = 3, 4, 4, _SHOWN, _SHOWN
_KIND_NAMES = {list: "JSON list", dict: "JSON object", str: "string"}
