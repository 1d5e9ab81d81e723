"""The exception tree.

Every message says what went wrong, where, and how to fix it. A numeric
divergence is never an exception: it is a `Comparison` result.

    ParityError                 anything the user can fix; the CLI exits 2
    ├── TraceError              a file is not a readable parity trace
    ├── OptionError             an option or argument is unusable
    │   └── OutputError         an output file cannot be written
    ├── CaptureError            a model could not be loaded or traced
    └── MissingDependency       an optional package is not installed
"""

from __future__ import annotations


class ParityError(Exception):
    """Base of every error parity raises on purpose."""


class TraceError(ParityError):
    """A file or directory is not a readable parity trace."""


class OptionError(ParityError):
    """An option, argument or configuration value is unusable."""


class CaptureError(ParityError):
    """A model could not be loaded, run or traced."""


class OutputError(OptionError):
    """An output path cannot be written (exists, read-only, not a directory, disk full)."""


class MissingDependency(ParityError):
    """An optional dependency is missing; the message carries the install hint."""

    def __init__(self, package: str, extra: str, purpose: str) -> None:
        super().__init__(
            f"{purpose} needs the '{package}' package, which is not installed: "
            f"pip install 'parity[{extra}]'"
        )
        self.package = package
        self.extra = extra


def require(module: str, *, extra: str, purpose: str, package: str | None = None):
    """Import `module` or raise MissingDependency with an install hint."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as error:
        if error.name is not None and error.name.split(".")[0] != module.split(".")[0]:
            raise  # the package is there but is itself broken: show the real cause
        raise MissingDependency(package or module, extra, purpose) from None
