"""Reading a small text file the user named: a prompt, token ids, a JSON report.

Only a regular file is read (not a directory, a FIFO or a device such as /dev/zero),
at most `max_bytes` of it, as UTF-8; any fault is one OptionError naming the file,
the option it came from, and what to give instead.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from parity.core.errors import OptionError

MAX_TEXT_BYTES = 64 * 2**20   # far above any prompt, id list or report parity reads


def read_text(path: str | Path, *, what: str, max_bytes: int = MAX_TEXT_BYTES) -> str:
    """The UTF-8 text of the regular file `path`; `what` names it in errors ('--file', 'the report')."""
    path = Path(path)
    try:
        status = os.stat(path)
    except FileNotFoundError:
        raise OptionError(f"{path}: no such file (given as {what})") from None
    except OSError as error:
        raise OptionError(f"{path}: cannot read it ({error.strerror or error}); give a readable file as {what}") from None
    if stat.S_ISDIR(status.st_mode):
        raise OptionError(f"{path} is a directory; give a file as {what}")
    if not stat.S_ISREG(status.st_mode):
        raise OptionError(f"{path} is not a regular file (a device, FIFO or socket); give a file as {what}")
    if status.st_size > max_bytes:
        raise OptionError(f"{path} holds {status.st_size:,} bytes, more than the {max_bytes:,} parity reads "
                          f"as {what}; give a smaller file")
    try:
        with open(path, "rb") as file:
            raw = file.read(max_bytes + 1)
    except OSError as error:
        raise OptionError(f"{path}: cannot read it ({error.strerror or error}); give a readable file as {what}") from None
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as error:
        raise OptionError(f"{path} is not UTF-8 text (byte {error.start} is {raw[error.start]:#04x}); "
                          f"give a UTF-8 text file as {what}") from None
