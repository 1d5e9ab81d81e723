"""The report files a command writes besides the console: --html, --junit, --markdown.

`check` runs before any long work (a model load, a capture) so that a path that
cannot be written fails in a second, not after the run; `write` writes each
file atomically (parity.core.files) once the result is there.
"""

from __future__ import annotations

from pathlib import Path

from parity.core.errors import OutputError
from parity.core.files import check_output_path
from parity.report import registry

FORMATS = ("html", "junit", "markdown")   # each a report format (parity.report.registry) and an option of its name


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
    return [registry.write(result, format, paths[format], overwrite=overwrite)
            for format in FORMATS if paths.get(format) is not None]
