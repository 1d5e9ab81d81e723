"""Printing rich renderables: to a string (tests, logs) or to the terminal, 100 columns when piped.

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


def show(parts: list, console=None) -> None:
    from rich.console import Console

    if console is None:
        console = Console()
        if not console.is_terminal:  # pipes and CI logs: rich would assume 80 columns
            console = Console(width=100)
    for part in parts:
        console.print(_Printable(part))
