"""Text from results and metadata made safe to put in a report: control characters out, then escaped.

Metadata comes from trace files anyone can write, and checkpoint names and
messages may carry it. Every report (HTML, JUnit XML, Markdown) passes each
piece of text through `printable` and then its own format's escaping.
"""

from __future__ import annotations

import html
import math
import re

# C0 controls but tab and newline, DEL, C1 controls, lone surrogates (not encodable as UTF-8),
# the two non-characters XML 1.0 forbids, and the bidi / invisible format characters that reorder or
# hide text ("Trojan source": U+202A-E overrides, U+2066-9 isolates, zero-width marks).
_UNPRINTABLE = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\ud800-\udfff\ufffe\uffff"
                          "\u200b-\u200f\u202a-\u202e\u2060-\u2069\ufeff]")


def printable(value: object, *, limit: int | None = None) -> str:
    """`str(value)` without control characters, cut to `limit` characters with a note of the length."""
    text = _UNPRINTABLE.sub("\N{REPLACEMENT CHARACTER}", str(value))
    if limit is not None and len(text) > limit:
        return f"{text[:limit]}… ({len(text)} characters)"
    return text


# An @mention where a report may be pasted (a PR comment, a CI summary that renders JUnit messages).
MENTION = re.compile(r"(?<![\w`])@([A-Za-z0-9][A-Za-z0-9-]*(?:/[A-Za-z0-9.-]+)?)")


def without_mentions(text: str) -> str:
    """`text` with each @name written with a fullwidth at sign (U+FF20): it reads the same, notifies no one."""
    return MENTION.sub("\uff20\\1", text)


def escape_html(value: object, *, limit: int | None = None) -> str:
    """Printable text escaped for HTML element content and quoted attribute values."""
    return html.escape(printable(value, limit=limit), quote=True)


def number(value: float | None, digits: int = 3) -> str:
    """A metric for people: 3 significant digits, 'NaN'/'inf' spelled out, '-' for none."""
    if value is None:
        return "-"
    if isinstance(value, float) and not math.isfinite(value):
        return "NaN" if math.isnan(value) else ("inf" if value > 0 else "-inf")
    return f"{value:.{digits}g}"
