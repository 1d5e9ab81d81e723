"""Opening the files of a trace: regular files only, inside the trace's own directory.

A trace names its own files (a manifest's `tensors`, an .npz's members), so a hostile
one can name `../../etc/passwd`, an absolute path, a symlink out of its directory,
`/dev/zero`, a FIFO or `/proc/self/environ`. `FileRef.inside` resolves a name against
the trace directory and refuses all of these before anything is opened; `FileRef.given`
checks a path the user gave. Both keep the file's identity (device, inode, size) and
every `open` checks it again on the opened descriptor, which was opened with
O_NOFOLLOW | O_NONBLOCK so that neither a swapped-in symlink nor a FIFO can slip through
or block. Reads are bounded by the size checked here.
"""

from __future__ import annotations

import errno
import os
import stat
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from parity.core.errors import TraceError
from parity.core.printable import printable

_OPEN_FLAGS = os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0)
MAX_NAME_CHARS = 255


@dataclass(frozen=True)
class FileRef:
    """A checked regular file: where it is, what the user calls it, and its identity."""

    path: Path          # fully resolved
    shown: str          # the path as the user or the manifest wrote it, for messages
    device: int
    inode: int
    size: int

    def __repr__(self) -> str:
        return f"<FileRef {self.shown} {self.size} bytes>"

    @classmethod
    def given(cls, path: Path) -> "FileRef":
        """A file the user named on the command line (symlinks followed: the user chose them)."""
        try:
            info = os.stat(path)
        except OSError as error:
            raise TraceError(f"{printable(path)}: cannot read it ({error.strerror}); check the path") from None
        _require_regular(info, printable(path))
        return cls(Path(os.path.realpath(path)), printable(path), info.st_dev, info.st_ino, info.st_size)

    @classmethod
    def inside(cls, directory: Path, name: object, *, listed_in: str) -> "FileRef":
        """The file `name` names in `directory`, refused unless it is a regular file within it."""
        where = f"{directory}: {listed_in} names {printable(str(name))[:100]}"
        if not isinstance(name, str) or not name or len(name) > MAX_NAME_CHARS or "\x00" in name:
            raise TraceError(f"{where}, which is not a file name; name a file in the trace directory")
        parts = PurePosixPath(name).parts
        if PurePosixPath(name).is_absolute() or ".." in parts or "\\" in name:
            raise TraceError(f"{where}, which is outside the trace directory; name files within {directory}")
        root = Path(os.path.realpath(directory))
        candidate = root / name
        try:
            info = os.lstat(candidate)
        except OSError as error:
            why = "does not exist" if error.errno == errno.ENOENT else f"cannot be read ({error.strerror})"
            raise TraceError(f"{where}, which {why}; add the file or fix the name") from None
        resolved = Path(os.path.realpath(candidate))
        if resolved != root and root not in resolved.parents:
            raise TraceError(f"{where}, a link to {resolved}, outside the trace directory; copy the file into it")
        if stat.S_ISLNK(info.st_mode):
            try:
                info = os.stat(resolved)
            except OSError as error:
                raise TraceError(f"{where}, a link that cannot be followed ({error.strerror})") from None
        _require_regular(info, printable(directory / name))
        return cls(resolved, printable(directory / name), info.st_dev, info.st_ino, info.st_size)

    def open(self):
        """A binary file object on this very file; TraceError if it changed or is no longer regular."""
        try:
            descriptor = os.open(self.path, _OPEN_FLAGS)
        except OSError as error:
            raise TraceError(f"{self.shown}: cannot open it ({error.strerror}); check the file") from None
        info = os.fstat(descriptor)
        if (not stat.S_ISREG(info.st_mode) or (info.st_dev, info.st_ino) != (self.device, self.inode)
                or info.st_size != self.size):
            os.close(descriptor)
            raise TraceError(f"{self.shown}: the file changed while parity was reading it; rerun when it is complete")
        return os.fdopen(descriptor, "rb")

    def read(self, offset: int, length: int) -> bytes:
        """Exactly `length` bytes at `offset`, which the caller has checked lie within the file."""
        if offset < 0 or length < 0 or offset + length > self.size:
            raise TraceError(f"{self.shown}: a read of {length} bytes at {offset} runs past the end ({self.size} bytes)")
        with self.open() as file:
            data = os.pread(file.fileno(), length, offset) if length else b""
        if len(data) != length:
            raise TraceError(f"{self.shown}: the file is shorter than it was; rerun when it is complete")
        return data


def _require_regular(info: os.stat_result, shown: str) -> None:
    if stat.S_ISREG(info.st_mode):
        return
    kind = ("a directory" if stat.S_ISDIR(info.st_mode) else "a FIFO" if stat.S_ISFIFO(info.st_mode)
            else "a device" if stat.S_ISCHR(info.st_mode) or stat.S_ISBLK(info.st_mode)
            else "a socket" if stat.S_ISSOCK(info.st_mode) else "not a regular file")
    raise TraceError(f"{shown}: is {kind}, not a regular file; a trace holds regular files only")
