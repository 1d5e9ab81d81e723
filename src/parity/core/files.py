"""Writing output files: checked first, written atomically, never replaced unless told.

Every file parity writes (traces, JSON, HTML, JUnit, Markdown, repro files) goes
through `write_atomically`: the bytes go to a temporary file in the target's own
directory, are flushed to disk, and only then renamed over the target. A run that
is killed at any moment leaves the previous file or none, never a partial one.
"""

from __future__ import annotations

import os
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO, Callable, Iterator

from parity.core.errors import OutputError

_TEMPORARY_PREFIX = ".parity-tmp-"


def check_output_path(path: str | Path, *, overwrite: bool, option: str = "output") -> Path:
    """The path to write, after checking it can be written; raises OutputError saying how to fix it."""
    if str(path) == "":
        raise OutputError(f"the {option} path is empty; give a file name")
    path = Path(path)
    if path.is_dir():
        raise OutputError(f"{path} is a directory; give a file name for the {option}")
    if path.exists() or path.is_symlink():
        if not overwrite:
            raise OutputError(f"{path} exists; choose another {option} path or pass --force to replace it")
        if not path.is_file():
            raise OutputError(f"{path} is not a regular file; choose another {option} path")
    parent = _existing_parent(path)
    if not parent.is_dir():
        raise OutputError(f"cannot write {path}: {parent} is not a directory; choose another {option} path")
    _probe(parent, path, f"choose another {option} path")
    return path


def check_output_directory(path: str | Path, *, overwrite: bool, option: str = "output") -> Path:
    """A directory to write files into, after checking it can be; non-empty only with `overwrite`."""
    if str(path) == "":
        raise OutputError(f"the {option} directory is empty; give a directory name")
    path = Path(path)
    if path.exists() or path.is_symlink():
        if not path.is_dir():
            raise OutputError(f"{path} exists and is not a directory; choose another {option} directory")
        try:
            occupied = any(path.iterdir())
        except OSError as error:
            raise OutputError(f"cannot write into {path}: {error.strerror or error}; "
                              f"choose another {option} directory") from None
        if occupied and not overwrite:
            raise OutputError(f"{path} exists and is not empty; choose another {option} directory "
                              "or pass --force to write into it")
        writable = path
    else:
        writable = _existing_parent(path)
        if not writable.is_dir():
            raise OutputError(f"cannot write {path}: {writable} is not a directory; choose another {option} directory")
    _probe(writable, path, f"choose another {option} directory")
    return path


def write_atomically(path: str | Path, content: bytes | str | Callable[[BinaryIO], None], *,
                     overwrite: bool = False, option: str = "output") -> Path:
    """Write `content` (bytes, text, or a function writing to a binary file) to `path` atomically."""
    path = check_output_path(path, overwrite=overwrite, option=option)
    with atomic_file(path, option=option) as file:
        if callable(content):
            content(file)
        else:
            file.write(content.encode("utf-8") if isinstance(content, str) else content)
    return path


@contextmanager
def atomic_file(path: Path, *, option: str = "output", readable: bool = False) -> Iterator[BinaryIO]:
    """A binary file that becomes `path` only when the block ends without an exception
    (`readable`: it can also be read back and rewritten in place while open)."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except FileExistsError:   # an ancestor is a file, not a directory
        raise OutputError(f"cannot write {path}: {_existing_parent(path)} is not a directory; "
                          f"choose another {option} path") from None
    except OSError as error:
        raise OutputError(f"cannot write {path}: {error.strerror or error}; choose another {option} path") from None
    try:
        descriptor, temporary = tempfile.mkstemp(prefix=_TEMPORARY_PREFIX, suffix=".part", dir=path.parent)
    except OSError as error:
        raise OutputError(f"cannot write {path}: {error.strerror or error}; choose another {option} path") from None
    try:
        with os.fdopen(descriptor, "w+b" if readable else "wb") as file:
            yield file
            file.flush()
            os.fsync(file.fileno())
        os.chmod(temporary, 0o666 & ~_umask())
        os.replace(temporary, path)
    except OSError as error:
        _remove(temporary)
        raise OutputError(f"cannot write {path}: {error.strerror or error}; "
                          f"check the free space and permissions, or choose another {option} path") from None
    except BaseException:
        _remove(temporary)
        raise


def _probe(directory: Path, path: Path, fix: str) -> None:
    """Create and remove a temporary file in `directory`: the one test of writability that holds for root,
    read-only mounts, full disks' inode tables, ACLs and /proc alike (os.access does not)."""
    try:
        descriptor, temporary = tempfile.mkstemp(prefix=_TEMPORARY_PREFIX, suffix=".probe", dir=directory)
    except OSError as error:
        raise OutputError(f"cannot write {path}: {directory} is not writable ({error.strerror or error}); {fix}") from None
    os.close(descriptor)
    _remove(temporary)


def _existing_parent(path: Path) -> Path:
    """The nearest ancestor of `path` that exists (the directories below it will be made)."""
    parent = path.absolute().parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    return parent


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _remove(path: str) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass
