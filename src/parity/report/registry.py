"""Renderers, registered per (result type, format): the one way any result becomes a report.

    @register(Comparison, "markdown")
    def comparison_markdown(comparison, **options) -> str: ...

    render(result, "markdown")                    # the text
    write(result, "html", "report.html")          # a file, written atomically ("-": standard output)
    show(result)                                  # the console report, on standard output

Formats: console, json, html, junit, markdown. A format's renderers live in
`parity.report.<format>` (a module, or a package whose modules register them),
imported the first time that format is asked for and never before: a command
that prints to the console does not pay for the HTML or JUnit code. A new format
is one new module that registers its renderers; nothing else names it.

A renderer takes the result and keyword options and returns the report's text,
ending with a newline, or an iterable of text pieces (JSON streams a large
report a record at a time). Console renderers take `width` and `color`.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from parity.core.files import write_atomically

FORMATS = ("console", "json", "html", "junit", "markdown")

Renderer = Callable[..., "str | Iterable[str]"]
_RENDERERS: dict[str, dict[type, Renderer]] = {}   # format -> result type -> its renderer


def register(result_type: type, format: str) -> Callable[[Renderer], Renderer]:
    """Register the decorated function as the `format` renderer of `result_type`; a second one is refused."""
    def add(renderer: Renderer) -> Renderer:
        table = _RENDERERS.setdefault(format, {})
        existing = table.get(result_type)
        if existing is not None:
            raise ValueError(f"a {format} renderer for {result_type.__name__} is already registered "
                             f"({existing.__module__}.{existing.__qualname__}); register the new one under "
                             "another format, or change that one")
        table[result_type] = renderer
        return renderer

    return add


def renderer(result_type: type, format: str) -> Renderer:
    """The `format` renderer of `result_type` (or of the nearest base class that has one)."""
    table = _load(format)
    for klass in result_type.__mro__:
        if klass in table:
            return table[klass]
    known = ", ".join(sorted(klass.__name__ for klass in table)) or "none"
    raise TypeError(f"no {format} report for {result_type.__name__} (the {format} format renders {known})")


def render(result: Any, format: str, **options) -> str:
    """`result` as `format`'s text."""
    text = renderer(type(result), format)(result, **options)
    return text if isinstance(text, str) else "".join(text)


def write(result: Any, format: str, path: str | Path, *, overwrite: bool = False, option: str | None = None,
          **options) -> Path | None:
    """Write `result`'s `format` report to `path` atomically ("-": standard output), piece by piece; never
    replaces a file unless `overwrite`. `option` names the command-line option in error messages."""
    pieces = renderer(type(result), format)(result, **options)
    pieces = (pieces,) if isinstance(pieces, str) else pieces
    if str(path) == "-":
        for piece in pieces:
            sys.stdout.write(piece)
        return None

    def write_to(file) -> None:
        for piece in pieces:
            file.write(piece.encode("utf-8"))

    return write_atomically(path, write_to, overwrite=overwrite, option=option or f"--{format}")


def show(result: Any, **options) -> None:
    """Print `result`'s console report: at the terminal's width and in colour on a terminal, 100 columns
    and plain text when piped (CI logs)."""
    from parity.report.terminal import screen

    sys.stdout.write(render(result, "console", **{**screen(), **options}))
    sys.stdout.flush()


def renders(result: Any) -> bool:
    """Whether `result` is a parity result: a type some renderer is registered for."""
    _load("console")   # every result type prints to the console
    return any(klass in table for table in _RENDERERS.values() for klass in type(result).__mro__)


def _load(format: str) -> dict[type, Renderer]:
    """The format's renderers, importing `parity.report.<format>` (which registers them) on first use."""
    if format not in _LOADED and format.isidentifier():
        _LOADED.add(format)
        try:
            importlib.import_module(f"parity.report.{format}")
        except ModuleNotFoundError as error:
            if error.name != f"parity.report.{format}":   # the module is there, but something it needs is not
                raise
    table = _RENDERERS.get(format)
    if table is None:
        raise ValueError(f"no report format '{format}': the formats are {', '.join(FORMATS)}, and any a module "
                         "registers with parity.report.registry.register")
    return table


_LOADED: set[str] = set()
