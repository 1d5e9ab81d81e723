"""What a server's answer must hold for the check to compare it; anything less is "not comparable".

A field can be well typed and the answer still say nothing: no tokens, no top-k
log-probabilities, tokens that do not lie where their offsets put them, one token
covering the whole text. Compared anyway, such an answer has no position to
disagree at, and passes. Each of these is refused here, in one line naming the
server and the first fault, before the reference is loaded:

  - text and token texts are Unicode (no lone surrogate escapes such as \\ud800);
  - at least two tokens (the first token's row predicts nothing);
  - a top_logprobs row, not empty, for every token after the first;
  - the tokens tile the text: the first at offset 0, each where the one before it
    ends and holding the text found there. A token that is part of a character
    (llama.cpp decodes it to "", others to U+FFFD or "bytes:...") may leave its
    bytes' character uncovered; what follows the last token is at most one
    token's worth of text (some servers leave the last generated token out);
  - something generated, unless the server says it stopped (finish_reason "stop"),
    and no more tokens than asked for.

Whether the reference has tokens at the same offsets is decided by the comparison
itself (core/sequence.py): a comparison of no position is refused there.
"""

from __future__ import annotations

from parity.core.errors import CaptureError
from parity.core.sequence import CandidateTokens

MAX_UNCOVERED_CHARS = 1024   # text after the last token: one dropped token's text, never a document
_NOT_COMPARABLE = "not comparable"


def check_comparable(candidate: CandidateTokens, prompt: str, where: str, *, finish_reason: object = None,
                     max_tokens: int | None = None) -> CandidateTokens:
    """`candidate`, or a CaptureError saying why the check cannot compare it."""
    pieces, offsets, rows, text = candidate.pieces, candidate.offsets, candidate.top_logprobs, candidate.text
    if len(pieces) < 2:
        raise _refuse(where, f"{len(pieces)} token{'s' if len(pieces) != 1 else ''} in choices[0].logprobs.tokens, "
                      "so no position has a prediction to compare", "send a prompt of two tokens or more, and check "
                      "that the server returns logprobs with echo")
    missing = next((i for i in range(1, len(rows)) if not rows[i]), None)
    if missing is not None:
        said = "null" if rows[missing] is None else "an empty object"
        raise _refuse(where, f"top_logprobs[{missing}] is {said}: parity compares the top-k log-probabilities of every "
                      "token after the first", "ask a server that supports the 'logprobs' parameter with echo")
    _check_tiling(pieces, offsets, text, where)
    generated = len(pieces) - candidate.first_generated
    if len(text) == len(prompt) and finish_reason != "stop":
        raise _refuse(where, f"the text is the prompt alone (finish_reason {_shown(finish_reason)}): nothing was "
                      "generated to compare", "check that the server honours max_tokens")
    if max_tokens is not None and generated > max_tokens + 1:
        raise _refuse(where, f"{generated} generated tokens where {max_tokens} were asked for",
                      "check that the server honours max_tokens")
    return candidate


def check_generated_comparable(candidate: CandidateTokens, where: str, *, finish_reason: object = None,
                               max_tokens: int | None = None) -> CandidateTokens:
    """An answer of generated tokens alone (a chat answer, a completion not echoed: each token's row predicts
    it), or a CaptureError saying why the check cannot compare it."""
    pieces, rows = candidate.pieces, candidate.top_logprobs
    if not pieces:
        said = "it stopped at once (finish_reason 'stop')" if finish_reason == "stop" else "no tokens came back"
        raise _refuse(where, f"its log-probabilities hold no token: {said}, so nothing generated is there to "
                      "compare", "send a prompt the model answers, and check that the server honours max_tokens")
    missing = next((i for i, row in enumerate(rows) if not row), None)
    if missing is not None:
        said = "missing" if rows[missing] is None else "empty"
        raise _refuse(where, f"the top_logprobs of token {missing} are {said}: parity compares the top-k "
                      "log-probabilities of every generated token", "ask with 'top_logprobs' (parity sends 5) a "
                      "server that supports it")
    _check_tiling(pieces, candidate.offsets, candidate.text, where)
    if max_tokens is not None and len(pieces) > max_tokens + 1:
        raise _refuse(where, f"{len(pieces)} generated tokens where {max_tokens} were asked for",
                      "check that the server honours max_tokens")
    return candidate


def tiled_offsets(pieces, text: str) -> tuple[int, ...]:
    """Where each of an answer's tokens starts in `text` when the answer gives no offsets: where the one before
    it ends; after a part of a character, where the piece is next found within one character."""
    offsets, end, after_partial = [], 0, False
    for piece in pieces:
        if after_partial and not partial_piece(piece) and text[end:end + len(piece)] != piece:
            found = text.find(piece, end, end + 1 + len(piece))
            end = found if found > end else end
        offsets.append(end)
        partial = partial_piece(piece)
        end, after_partial = (end if partial else end + len(piece)), partial
    return tuple(offsets)


def _check_tiling(pieces: tuple[str, ...], offsets: tuple[int, ...], text: str, where: str) -> None:
    if offsets[0] != 0:
        raise _refuse(where, f"text_offset[0] is {offsets[0]}, not 0: the echoed tokens do not start where the "
                      "text does", _TILE_FIX)
    end, after_partial = 0, False
    for index, (piece, offset) in enumerate(zip(pieces, offsets)):
        if offset != end and not (after_partial and offset > end):
            raise _refuse(where, f"token {index} ({_shown(piece)}) starts at offset {offset}, where the token before "
                          f"it ends at {end}: the tokens do not tile the text", _TILE_FIX)
        partial = partial_piece(piece)
        if not partial and text[offset:offset + len(piece)] != piece:
            raise _refuse(where, f"token {index} is {_shown(piece)} but the text at offset {offset} holds "
                          f"{_shown(text[offset:offset + max(len(piece), 1)])}", _TILE_FIX)
        end, after_partial = (end if partial else offset + len(piece)), partial
    if len(text) - end > MAX_UNCOVERED_CHARS:
        raise _refuse(where, f"its tokens cover {end:,} of the text's {len(text):,} characters", _TILE_FIX)


_TILE_FIX = "check that text_offset and tokens come from the same tokenization of the answer's text"


def partial_piece(piece: str) -> bool:
    """A token that is part of a character's bytes, as servers show one."""
    return piece == "" or "\ufffd" in piece or piece.startswith("bytes:")


def check_unicode(value: str, where: str, path: str) -> None:
    """Refuse a string holding a lone surrogate (JSON's "\\ud800"): no tokenizer or terminal takes it."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as error:
        raise _refuse(where, f"{path} holds the lone surrogate escape \\u{ord(value[error.start]):04x} at character "
                      f"{error.start}, which is not Unicode text", "check the server's JSON encoder") from None


def _refuse(where: str, why: str, fix: str) -> CaptureError:
    return CaptureError(f"{where} answered what cannot be compared ({_NOT_COMPARABLE}): {why}; {fix}")


def _shown(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:40] + "..."
