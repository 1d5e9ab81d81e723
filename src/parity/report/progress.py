"""Progress for long work: a spinner naming the current step on a terminal,
one line per step on standard error otherwise (CI logs keep them)."""

from __future__ import annotations

import sys
import time

from parity.core.printable import printable


class Progress:
    def __init__(self, stream=None) -> None:
        self.stream = stream or sys.stderr
        self._status = None
        self._started = time.monotonic()

    def __repr__(self) -> str:
        return f"<Progress {'spinner' if self._status else 'lines'}>"

    def __enter__(self) -> "Progress":
        if self.stream.isatty():
            from rich.console import Console

            self._status = Console(file=self.stream).status("starting")
            self._status.start()
        return self

    def __exit__(self, *exc_info) -> None:
        if self._status is not None:
            self._status.stop()

    def step(self, message: str) -> None:
        message = printable(message)  # it may name a model or file another program wrote
        elapsed = time.monotonic() - self._started
        if self._status is not None:
            self._status.update(f"{message} ({elapsed:.0f}s)")
        else:
            print(f"parity: {message}", file=self.stream, flush=True)
