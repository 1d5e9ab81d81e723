"""Reading an OpenAI completions answer (echo + logprobs) and checking every field it holds.

A server is untrusted input: each field read is checked for its type and range,
and a fault is one line naming the field, what the server sent there, and what
was expected. The shape read:

    {"choices": [{"text": str,
                  "logprobs": {"tokens": [str, ...],
                               "text_offset": [int, ...],         0 <= offset <= len(text), non-decreasing
                               "token_logprobs": [float|null, ...],   <= 0 (a log-probability)
                               "top_logprobs": [{str: float}|null, ...] | null}}]}

A server that does not echo the prompt (llama.cpp's llama-server refuses `echo`;
others ignore it) answers the continuation alone: its tokens are laid along the text
and compared after the prompt, as the reference tokenizes it. llama-server writes
them in the chat shape, `"logprobs": {"content": [{"token", "logprob",
"top_logprobs": [...]}, ...]}`, read as chat_completion.py reads a chat answer.

What the check then needs of these fields (tokens that tile the text, a top-k row
per token, ...) is comparable.py's.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from parity.capture.server.chat_completion import generated_tokens
from parity.capture.server.comparable import check_comparable, check_generated_comparable, check_unicode, tiled_offsets
from parity.capture.server.fields import (MAX_TOKENS, MAX_TOP, field_of, is_int, is_unicode, item_of,
                                          log_probability, shown)
from parity.core.errors import CaptureError
from parity.core.sequence import CandidateTokens

_FIX = "check that it is an OpenAI-compatible /v1/completions endpoint that supports echo and logprobs"
_SHAPE = "choices[0].logprobs with tokens, text_offset, token_logprobs"


def parse_completion(answer: Any, prompt: str, where: str, *, max_tokens: int | None = None) -> CandidateTokens:
    """The prompt echoed and its continuation (the continuation alone, told the prompt it follows, where the
    server echoed none) with their log-probabilities; raises CaptureError naming the field, or saying why the
    answer cannot be compared."""
    choice = item_of(_field(answer, "choices", list, where, "the answer"), 0, dict, where, "choices", _FIX)
    text = _field(choice, "text", str, where, "choices[0]")
    check_unicode(text, where, "choices[0].text")
    logprobs = _field(choice, "logprobs", dict, where, "choices[0]",
                      hint="does the server support logprobs with echo?")
    finish_reason = choice.get("finish_reason")
    if isinstance(logprobs.get("content"), list):   # llama.cpp's llama-server: the chat shape, generated tokens alone
        generated = text[len(prompt):] if prompt and text.startswith(prompt) else text
        return _after(generated_tokens(logprobs["content"], generated, where, finish_reason=finish_reason,
                                       max_tokens=max_tokens, endpoint="/v1/completions"), prompt)
    if not text.startswith(prompt):                  # not echoed: the tokens are the continuation's alone
        return _after(_not_echoed(logprobs, text, where, finish_reason, max_tokens), prompt)
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


def _not_echoed(logprobs: dict, text: str, where: str, finish_reason, max_tokens) -> CandidateTokens:
    """The continuation's tokens laid along `text` (their text_offset, counted from wherever a server counts
    them without echo, is not read)."""
    path = "choices[0].logprobs"
    pieces = _list_of(logprobs, "tokens", where, path, _piece)
    token_logprobs = _list_of(logprobs, "token_logprobs", where, path, _logprob)
    top_logprobs = _list_of(logprobs, "top_logprobs", where, path, _top_row)
    if not len(pieces) == len(token_logprobs) == len(top_logprobs):
        raise CaptureError(f"{where} answered logprobs lists of different lengths (tokens {len(pieces)}, "
                           f"token_logprobs {len(token_logprobs)}, top_logprobs {len(top_logprobs)}); {_FIX}")
    candidate = CandidateTokens(text, pieces, tiled_offsets(pieces, text), token_logprobs, top_logprobs, 0)
    return check_generated_comparable(candidate, where, finish_reason=finish_reason, max_tokens=max_tokens)


def _after(candidate: CandidateTokens, prompt: str) -> CandidateTokens:
    """A continuation not echoed, told the prompt it follows (as sent: the tokenizer adds its special tokens)."""
    return dataclasses.replace(candidate, follows=prompt, follows_template=False)


# --- one field ------------------------------------------------------------------


def _field(container: dict, key: str, kind: type, where: str, path: str, hint: str = "") -> Any:
    return field_of(container, key, kind, where, path, hint or _FIX, endpoint="/v1/completions", shape=_SHAPE)


def _list_of(container: dict, key: str, where: str, path: str, check) -> tuple:
    items = _field(container, key, list, where, path)
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
    return (item, "") if is_unicode(item) else (None, "Unicode text (it holds a lone surrogate escape)")


def _offset(text_length: int):
    def check(item) -> tuple[Any, str]:
        if is_int(item) and 0 <= item <= text_length:
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
        if not is_unicode(piece):
            return None, f"{expected}; its entry {shown(piece)} holds a lone surrogate escape"
        logprob = log_probability(value)
        if logprob is None:
            return None, f"{expected}; its entry {shown(piece)} is {shown(value)}"
        row[piece] = logprob
    return row, ""


