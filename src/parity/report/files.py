"""The report files a command writes besides the console: --html, --junit, --markdown.

`check` runs before any long work (a model load, a capture) so that a path that
cannot be written fails in a second, not after the run; `write` writes each
file atomically (parity.core.files) once the result is there.
"""

from __future__ import annotations

from pathlib import Path

from parity.core.errors import OutputError
from parity.core.files import check_output_path

FORMATS = ("html", "junit", "markdown")   # each a module of parity.report with write(result, path, overwrite=)


def check(paths: dict[str, str | None], *, overwrite: bool) -> None:
    """Each requested path can be written, and no two options name the same file."""
    seen: dict[Path, str] = {}
    for option, path in paths.items():
        if path is None or str(path) == "-":
            continue
        checked = check_output_path(path, overwrite=overwrite, option=f"--{option}").absolute()
        if checked in seen:
            raise OutputError(f"--{seen[checked]} and --{option} both write {path}; give each its own file")
        seen[checked] = option


def write(result, paths: dict[str, str | None], *, overwrite: bool) -> list[Path]:
    """Write each requested report of `result`; returns the paths written."""
    import importlib

    written = []
    for option in FORMATS:
        path = paths.get(option)
        if path is not None:
            module = importlib.import_module(f"parity.report.{option}")
            written.append(module.write(result, path, overwrite=overwrite))
    return written
