"""Text safe to print: what trace metadata, model files and file names may say reaches the
console only through `printable`.

A producer name, a prompt, a token's text or a tensor name comes from a file parity did
not write. Printed raw, an escape sequence in it can clear the screen, rewrite earlier
lines or retitle the terminal, and a lone surrogate (legal in JSON's \\ud800) makes
`print` raise. `printable` replaces every control character (C0, DEL, C1), every
format character that reorders or hides text (bidi overrides, zero-width marks) and
every surrogate with U+FFFD, one for one, so widths and positions are kept.
"""

from __future__ import annotations

import re
import unicodedata

REPLACEMENT = "\ufffd"
# C0 controls (newline and tab included: a printed field is one line), DEL, C1 controls,
# surrogates, and the bidi / invisible format characters ("Trojan source").
_UNPRINTABLE = re.compile("[\x00-\x1f\x7f-\x9f\ud800-\udfff\u200b-\u200f\u202a-\u202e\u2060-\u2069\ufeff]")


def printable(text: object) -> str:
    """`text` as a string that cannot move the cursor, change the terminal or fail to encode."""
    text = text if isinstance(text, str) else str(text)
    text = _UNPRINTABLE.sub(REPLACEMENT, text)
    if text.isascii():
        return text
    return "".join(REPLACEMENT if unicodedata.category(char) in ("Cc", "Cs") else char for char in text)


def is_printable(text: str) -> bool:
    """True when `printable` would leave `text` unchanged."""
    return printable(text) == text
