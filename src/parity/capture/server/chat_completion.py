"""Reading an OpenAI chat completions answer (logprobs, top_logprobs) and checking every field it holds.

A chat endpoint renders the prompt with its own chat template and never echoes it:
its answer holds the generated text alone, each token with the top-k log-probabilities
of the distribution that chose it. The shape read:

    {"choices": [{"message": {"content": str},
                  "logprobs": {"content": [{"token": str, "logprob": float,
                                            "top_logprobs": [{"token": str, "logprob": float}, ...]}, ...]},
                  "finish_reason": str}]}

mistral.rs's server writes each alternative's id under "token" and its text under
"bytes"; that is read too. The tokens' offsets are not sent: each token is placed
where the one before it ends (a token that is part of a character, "" or U+FFFD,
lets the next one start up to one character later). What the check then needs of
them is comparable.py's.
"""

from __future__ import annotations

from typing import Any

from parity.capture.server.comparable import check_chat_comparable, check_unicode, partial_piece
from parity.capture.server.completion import MAX_TOKENS, MAX_TOP, field_of, item_of, log_probability, shown
from parity.core.errors import CaptureError
from parity.core.sequence import CandidateTokens

ENDPOINT = "/v1/chat/completions"
_FIX = "check that it is an OpenAI-compatible /v1/chat/completions endpoint that supports logprobs and top_logprobs"
_SHAPE = "choices[0].logprobs.content: a list of {token, logprob, top_logprobs}"


def parse_chat_completion(answer: Any, where: str, *, max_tokens: int | None = None) -> CandidateTokens:
    """The generated text with its tokens and log-probabilities; raises CaptureError naming the field, or saying
    why the answer cannot be compared."""
    def field(container, key, kind, path, hint=""):
        return field_of(container, key, kind, where, path, hint or _FIX, endpoint=ENDPOINT, shape=_SHAPE)

    choice = item_of(field(answer, "choices", list, "the answer"), 0, dict, where, "choices", _FIX)
    text = field(field(choice, "message", dict, "choices[0]"), "content", str, "choices[0].message")
    check_unicode(text, where, "choices[0].message.content")
    logprobs = field(choice, "logprobs", dict, "choices[0]",
                     hint="ask a server that returns logprobs for chat completions ('logprobs': true)")
    entries = field(logprobs, "content", list, "choices[0].logprobs")
    if len(entries) > MAX_TOKENS:
        raise CaptureError(f"{where} answered {len(entries):,} tokens, more than {MAX_TOKENS:,}; ask for fewer "
                           "tokens with -n")
    pieces, token_logprobs, rows = [], [], []
    for index, entry in enumerate(entries):
        path = f"choices[0].logprobs.content[{index}]"
        pieces.append(_token(field(entry, "token", str, path), where, f"{path}.token"))
        token_logprobs.append(_logprob(entry.get("logprob"), where, f"{path}.logprob"))
        rows.append(_top_row(entry.get("top_logprobs"), where, f"{path}.top_logprobs"))
    candidate = CandidateTokens(text, tuple(pieces), _offsets(pieces, text), tuple(token_logprobs), tuple(rows), 0)
    return check_chat_comparable(candidate, where, finish_reason=choice.get("finish_reason"), max_tokens=max_tokens)


def _token(piece: str, where: str, path: str) -> str:
    check_unicode(piece, where, path)
    return piece


def _logprob(value, where: str, path: str) -> float | None:
    if value is None:
        return None
    read = log_probability(value)
    if read is None:
        raise CaptureError(f"{where} answered {path} = {shown(value)}, expected a log-probability (a number <= 0); "
                           f"{_FIX}")
    return read


def _top_row(items, where: str, path: str) -> dict[str, float] | None:
    """{token text: log-probability} of a top_logprobs list (the first entry kept where a text repeats)."""
    if items is None:
        return None
    if not isinstance(items, list) or len(items) > MAX_TOP:
        raise CaptureError(f"{where} answered {path} = {shown(items)}, expected a list of at most {MAX_TOP} "
                           f"{{token, logprob}} objects; {_FIX}")
    row: dict[str, float] = {}
    for index, item in enumerate(items):
        piece = _alternative(item)
        if piece is None:
            raise CaptureError(f"{where} answered {path}[{index}] = {shown(item)}, expected a {{token, logprob}} "
                               f"object (or mistral.rs's {{token: id, bytes: text, logprob}}); {_FIX}")
        check_unicode(piece, where, f"{path}[{index}].token")
        logprob = log_probability(item.get("logprob"))
        if logprob is None:
            raise CaptureError(f"{where} answered {path}[{index}].logprob = {shown(item.get('logprob'))}, expected "
                               f"a log-probability (a number <= 0); {_FIX}")
        row.setdefault(piece, logprob)
    return row


def _alternative(item) -> str | None:
    """The text of one top_logprobs entry: its "token", or, where "token" is the id (mistral.rs's server), its
    "bytes" written as text."""
    if not isinstance(item, dict):
        return None
    token, text = item.get("token"), item.get("bytes")
    if isinstance(token, str):
        return token
    if isinstance(token, int) and not isinstance(token, bool) and isinstance(text, str):
        return text
    return None


def _offsets(pieces: list[str], text: str) -> tuple[int, ...]:
    """Where each token starts in `text`: where the one before ends; after a part of a character, where the
    piece is next found within one character."""
    offsets, end, after_partial = [], 0, False
    for piece in pieces:
        if after_partial and not partial_piece(piece) and text[end:end + len(piece)] != piece:
            found = text.find(piece, end, end + 1 + len(piece))
            end = found if found > end else end
        offsets.append(end)
        partial = partial_piece(piece)
        end, after_partial = (end if partial else end + len(piece)), partial
    return tuple(offsets)
