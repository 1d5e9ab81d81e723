"""Laying rich renderables out as text, at a width, with or without colour (the registry prints it).

Every part goes through `_Printable`, which passes each piece of text rich lays out
through `parity.core.printable.printable`: strings from trace metadata, model files
and tokenizers never reach the terminal with control characters in them. Only the
styles rich itself adds (held apart from the text) become escape sequences.
"""

from __future__ import annotations

import io

from parity.core.printable import printable


class _Printable:
    """A renderable whose text segments are sanitised after layout; styles, control segments and
    line breaks kept (a line break moves no cursor backwards; a carriage return does, and is replaced)."""

    def __init__(self, part) -> None:
        self.part = part

    def __rich_console__(self, console, options):
        from rich.segment import Segment

        for segment in console.render(self.part, options):
            if segment.control or segment.text == "\n":
                yield segment
            else:
                yield Segment("\n".join(map(printable, segment.text.split("\n"))), segment.style)


def render(parts: list, *, width: int = 100, color: bool = False) -> str:
    from rich.console import Console

    buffer = io.StringIO()
    console = Console(file=buffer, width=width, force_terminal=color, color_system="standard" if color else None)
    for part in parts:
        console.print(_Printable(part))
    return buffer.getvalue()


def screen() -> dict:
    """How standard output shows a report, as render's options: a terminal's width and colours, or 100
    columns and plain text when piped (CI logs; rich would assume 80)."""
    try:
        from rich.console import Console
    except ImportError:   # the console report says how to install it; plain-text reports need nothing
        return {"width": 100, "color": False}
    console = Console()
    if not console.is_terminal:
        return {"width": 100, "color": False}
    return {"width": console.width, "color": console.color_system is not None}
