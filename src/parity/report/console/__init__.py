"""The console format: one module per result type, each registering its renderer (parity.report.registry).

Layer comparisons, token-level and tokenizer comparisons and generation are laid
out by rich (to the terminal's width, in colour on a terminal); sanity, kernel,
bench and gradients reports are plain text.
"""

from __future__ import annotations

from parity.report.console import bench, generation, gradients, kernel, layers, sanity, sequence, tokenizer  # noqa: F401
from parity.report.registry import render as _render


def render(result, *, width: int = 100, color: bool = False, **options) -> str:
    """The console report of any result, as text (tests, logs)."""
    return _render(result, "console", width=width, color=color, **options)
