"""The HTML format: one self-contained page per result (inline CSS, SVG and script; nothing fetched).

page.py holds what every page shares; layers.py lays out a layer-by-layer comparison,
sequences.py decoding, generation, a server's tokens and tokenizers; svg.py draws.
Each registers its renderers (parity.report.registry) when this package is imported.
"""

from __future__ import annotations

from pathlib import Path

from parity.report.html import layers, sequences  # noqa: F401  (they register the renderers)
from parity.report.html.page import CSP  # noqa: F401  (the policy every page carries)
from parity.report.registry import render as _render, write as _write


def render(result) -> str:
    """The page of any result parity produces."""
    return _render(result, "html")


def write(result, path: str | Path, *, overwrite: bool = False) -> Path | None:
    return _write(result, "html", path, overwrite=overwrite)
