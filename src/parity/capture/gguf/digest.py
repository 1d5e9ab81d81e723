"""The SHA-256 of a file's content: read in chunks, computed once per file identity.

A file's identity is what changes whenever its content can have: device, inode,
size, modification time and change time. The change time cannot be set back by
`touch` or `os.utime` (writing the file, or setting its times, moves it to now),
so a file rewritten with its size and modification time kept has a new
identity and is hashed again. Digests are remembered in the process and, where a
directory is given, in one small JSON file per identity (a cache's own index),
which is checked on read like everything else: a damaged one is recomputed.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import tempfile
from pathlib import Path

CHUNK_BYTES = 8 << 20
_HEX = re.compile(r"^[0-9a-f]{64}$")
_MEMO: dict[tuple, str] = {}


def identity(status: os.stat_result) -> tuple[int, int, int, int, int]:
    return (status.st_dev, status.st_ino, status.st_size, status.st_mtime_ns, status.st_ctime_ns)


def file_sha256(path: str | Path, *, index: Path | None = None) -> str:
    """The hex SHA-256 of the regular file at `path` (opened without following a final link's swap:
    the identity is taken from the open file). `index`: a directory that remembers digests across runs."""
    with open(path, "rb") as file:
        status = os.fstat(file.fileno())
        key = identity(status)
        if key in _MEMO:
            return _MEMO[key]
        remembered = _read_index(index, key) if index is not None else None
        digest = remembered or hash_open_file(file)
    if index is not None and remembered is None:
        _write_index(index, key, digest)
    _MEMO[key] = digest
    return digest


def hash_open_file(file) -> str:
    digest = hashlib.sha256()
    while chunk := file.read(CHUNK_BYTES):
        digest.update(chunk)
    return digest.hexdigest()


def _index_path(index: Path, key: tuple) -> Path:
    return index / (hashlib.sha256(repr(key).encode()).hexdigest()[:32] + ".json")


def _read_index(index: Path, key: tuple) -> str | None:
    path = _index_path(index, key)
    try:
        if not path.is_file() or path.is_symlink() or path.stat().st_size > 4096:
            return None
        record = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(record, dict) or record.get("identity") != list(key):
        return None
    digest = record.get("sha256")
    return digest if isinstance(digest, str) and _HEX.match(digest) else None


def _write_index(index: Path, key: tuple, digest: str) -> None:
    """Remember the digest; an index that cannot be written is skipped (it only saves time)."""
    staging = None
    try:
        index.mkdir(parents=True, exist_ok=True)
        descriptor, staging = tempfile.mkstemp(prefix=".parity-tmp-", dir=index)
        with os.fdopen(descriptor, "w", encoding="utf-8") as file:
            json.dump({"identity": list(key), "sha256": digest}, file)
        os.replace(staging, _index_path(index, key))
        staging = None
    except OSError:
        pass
    finally:
        if staging is not None:
            with contextlib.suppress(OSError):
                os.unlink(staging)
