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

from parity.capture.server.comparable import check_generated_comparable, check_unicode, tiled_offsets
from parity.capture.server.fields import MAX_TOKENS, MAX_TOP, field_of, item_of, log_probability, shown
from parity.core.errors import CaptureError
from parity.core.sequence import CandidateTokens

ENDPOINT = "/v1/chat/completions"
_SHAPE = "choices[0].logprobs.content: a list of {token, logprob, top_logprobs}"


def parse_chat_completion(answer: Any, where: str, *, max_tokens: int | None = None) -> CandidateTokens:
    """The generated text with its tokens and log-probabilities; raises CaptureError naming the field, or saying
    why the answer cannot be compared."""
    def field(container, key, kind, path, hint=""):
        return field_of(container, key, kind, where, path, hint or _fix(ENDPOINT), endpoint=ENDPOINT, shape=_SHAPE)

    choice = item_of(field(answer, "choices", list, "the answer"), 0, dict, where, "choices", _fix(ENDPOINT))
    text = field(field(choice, "message", dict, "choices[0]"), "content", str, "choices[0].message")
    check_unicode(text, where, "choices[0].message.content")
    logprobs = field(choice, "logprobs", dict, "choices[0]",
                     hint="ask a server that returns logprobs for chat completions ('logprobs': true)")
    entries = field(logprobs, "content", list, "choices[0].logprobs")
    return generated_tokens(entries, text, where, finish_reason=choice.get("finish_reason"), max_tokens=max_tokens)


def generated_tokens(entries: list, text: str, where: str, *, finish_reason: object = None,
                     max_tokens: int | None = None, endpoint: str = ENDPOINT) -> CandidateTokens:
    """The tokens of a `logprobs.content` list laid along `text`, the generated text alone (OpenAI's chat shape;
    llama.cpp's llama-server answers completions so too)."""
    fix = _fix(endpoint)
    if len(entries) > MAX_TOKENS:
        raise CaptureError(f"{where} answered {len(entries):,} tokens, more than {MAX_TOKENS:,}; ask for fewer "
                           "tokens with -n")
    pieces, token_logprobs, rows = [], [], []
    for index, entry in enumerate(entries):
        path = f"choices[0].logprobs.content[{index}]"
        piece = field_of(entry, "token", str, where, path, fix, endpoint=endpoint, shape=_SHAPE)
        check_unicode(piece, where, f"{path}.token")
        pieces.append(piece)
        token_logprobs.append(_logprob(entry.get("logprob"), where, f"{path}.logprob", fix))
        rows.append(_top_row(entry.get("top_logprobs"), where, f"{path}.top_logprobs", fix))
    candidate = CandidateTokens(text, tuple(pieces), tiled_offsets(pieces, text), tuple(token_logprobs),
                                tuple(rows), 0)
    return check_generated_comparable(candidate, where, finish_reason=finish_reason, max_tokens=max_tokens)


def _fix(endpoint: str) -> str:
    return f"check that it is an OpenAI-compatible {endpoint} endpoint that supports logprobs and top_logprobs"


def _logprob(value, where: str, path: str, fix: str) -> float | None:
    if value is None:
        return None
    read = log_probability(value)
    if read is None:
        raise CaptureError(f"{where} answered {path} = {shown(value)}, expected a log-probability (a number <= 0); "
                           f"{fix}")
    return read


def _top_row(items, where: str, path: str, fix: str) -> dict[str, float] | None:
    """{token text: log-probability} of a top_logprobs list (the first entry kept where a text repeats)."""
    if items is None:
        return None
    if not isinstance(items, list) or len(items) > MAX_TOP:
        raise CaptureError(f"{where} answered {path} = {shown(items)}, expected a list of at most {MAX_TOP} "
                           f"{{token, logprob}} objects; {fix}")
    row: dict[str, float] = {}
    for index, item in enumerate(items):
        piece = _alternative(item)
        if piece is None:
            raise CaptureError(f"{where} answered {path}[{index}] = {shown(item)}, expected a {{token, logprob}} "
                               f"object (or mistral.rs's {{token: id, bytes: text, logprob}}); {fix}")
        check_unicode(piece, where, f"{path}[{index}].token")
        logprob = log_probability(item.get("logprob"))
        if logprob is None:
            raise CaptureError(f"{where} answered {path}[{index}].logprob = {shown(item.get('logprob'))}, expected "
                               f"a log-probability (a number <= 0); {fix}")
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
