"""Printing rich renderables: to a string (tests, logs) or to the terminal, 100 columns when piped."""

from __future__ import annotations

import io


def render(parts: list, *, width: int = 100, color: bool = False) -> str:
    from rich.console import Console

    buffer = io.StringIO()
    console = Console(file=buffer, width=width, force_terminal=color, color_system="standard" if color else None)
    for part in parts:
        console.print(part)
    return buffer.getvalue()


def show(parts: list, console=None) -> None:
    from rich.console import Console

    if console is None:
        console = Console()
        if not console.is_terminal:  # pipes and CI logs: rich would assume 80 columns
            console = Console(width=100)
    for part in parts:
        console.print(part)
