"""One entry of the dequantized-GGUF cache: a model directory and the manifest that vouches for it.

    <entry>/config.json, model.safetensors, tokenizer files
    <entry>/parity-cache.json   {"layout", "gguf": {"sha256", "size", "name"}, "transformers",
                                 "files": {name: {"size", "sha256"}}}

An entry is whole when it is a real directory (not a link), holds exactly the
files its manifest lists, each a regular file (not a link, FIFO or directory) of
the listed size and SHA-256, and was made from the GGUF content it is asked for.
Anything else is named in one line and the entry is not used. A check hashes every
file; it is done once per process while the files' identities stay the same.
"""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

from parity.capture.gguf.digest import hash_open_file, identity

MANIFEST = "parity-cache.json"
LAYOUT = 2                         # bump when what an entry holds changes
MAX_MANIFEST_BYTES = 1 << 20
MAX_FILES = 64                     # config, weights, a handful of tokenizer files
_VERIFIED: dict[str, tuple] = {}   # entry path -> the file identities last found whole


def write_manifest(directory: Path, gguf: dict, transformers_version: str) -> None:
    """List and hash every file in `directory` (just written by parity) into its manifest."""
    files = {}
    for entry in sorted(os.scandir(directory), key=lambda entry: entry.name):
        with open(entry.path, "rb") as file:
            files[entry.name] = {"size": os.fstat(file.fileno()).st_size, "sha256": hash_open_file(file)}
    document = {"layout": LAYOUT, "gguf": gguf, "transformers": transformers_version, "files": files}
    (directory / MANIFEST).write_text(json.dumps(document, indent=1), encoding="utf-8")


def damage(directory: Path, *, gguf_sha256: str | None = None, transformers_version: str | None = None) -> str | None:
    """None when the entry is whole (and made from that GGUF content); otherwise what is wrong with it."""
    try:
        status = os.lstat(directory)
    except OSError as error:
        return f"cannot read it ({error.strerror})"
    if stat.S_ISLNK(status.st_mode):
        return "it is a symbolic link (entries are never links)"
    if not stat.S_ISDIR(status.st_mode):
        return "it is not a directory"
    try:
        manifest = _read_manifest(directory)
        if isinstance(manifest, str):
            return manifest
        problem = _check_origin(manifest, gguf_sha256, transformers_version)
        return problem or _check_files(directory, manifest["files"])
    except OSError as error:
        return f"cannot read it ({error.strerror or error})"


def _read_manifest(directory: Path) -> dict | str:
    path = directory / MANIFEST
    try:
        descriptor = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError as error:
        return f"{MANIFEST} is missing (an entry of an older parity, or an interrupted one)" \
            if error.errno == 2 else f"{MANIFEST} cannot be opened ({error.strerror}; a link is refused)"
    with os.fdopen(descriptor, "rb") as file:
        status = os.fstat(file.fileno())
        if not stat.S_ISREG(status.st_mode) or status.st_size > MAX_MANIFEST_BYTES:
            return f"{MANIFEST} is not a small regular file"
        raw = file.read(MAX_MANIFEST_BYTES + 1)
    try:
        manifest = json.loads(raw.decode("utf-8"))
    except (ValueError, UnicodeDecodeError, RecursionError):
        return f"{MANIFEST} is not JSON"
    files = manifest.get("files") if isinstance(manifest, dict) else None
    if (not isinstance(manifest, dict) or manifest.get("layout") != LAYOUT or not isinstance(files, dict)
            or not 0 < len(files) <= MAX_FILES or not all(_is_record(name, record) for name, record in files.items())):
        return f"{MANIFEST} is not a manifest of this parity's layout {LAYOUT}"
    return manifest


def _is_record(name: object, record: object) -> bool:
    return (isinstance(name, str) and name not in ("", ".", "..", MANIFEST) and "/" not in name and "\0" not in name
            and isinstance(record, dict) and type(record.get("size")) is int and record["size"] >= 0
            and isinstance(record.get("sha256"), str) and len(record["sha256"]) == 64)


def _check_origin(manifest: dict, gguf_sha256: str | None, transformers_version: str | None) -> str | None:
    gguf = manifest.get("gguf")
    if not isinstance(gguf, dict) or not isinstance(gguf.get("sha256"), str):
        return f"{MANIFEST} does not say which GGUF it was made from"
    if gguf_sha256 is not None and gguf["sha256"] != gguf_sha256:
        return "it was made from another GGUF's content"
    if transformers_version is not None and manifest.get("transformers") != transformers_version:
        return f"it was made by transformers {str(manifest.get('transformers'))[:20]}"
    return None


def _check_files(directory: Path, files: dict) -> str | None:
    listed = set(files)
    present = {}
    with os.scandir(directory) as entries:
        for count, entry in enumerate(entries):
            if count > MAX_FILES + 1:
                return f"it holds more than {MAX_FILES} files"
            if entry.name == MANIFEST:
                continue
            if entry.name not in listed:
                return f"it holds {entry.name[:60]!r}, which its manifest does not list"
            status = entry.stat(follow_symlinks=False)
            if not stat.S_ISREG(status.st_mode):
                kind = "a symbolic link" if stat.S_ISLNK(status.st_mode) else "not a regular file"
                return f"{entry.name} is {kind}"
            present[entry.name] = identity(status)
    missing = sorted(listed - set(present))
    if missing:
        return f"{missing[0]} is missing"
    seen = tuple(sorted(present.items()))
    if _VERIFIED.get(str(directory)) == seen:
        return None
    for name in sorted(files):
        problem = _check_file(directory / name, files[name])
        if problem:
            return f"{name} {problem}"
    _VERIFIED[str(directory)] = seen
    return None


def _check_file(path: Path, record: dict) -> str | None:
    try:
        descriptor = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError as error:
        return f"cannot be opened ({error.strerror})"
    with os.fdopen(descriptor, "rb") as file:
        status = os.fstat(file.fileno())
        if not stat.S_ISREG(status.st_mode):
            return "is not a regular file"
        if status.st_size != record["size"]:
            return f"has {status.st_size:,} bytes where {record['size']:,} were written"
        if hash_open_file(file) != record["sha256"]:
            return "does not hash to what was written (its content changed)"
    return None


def forget(directory: Path) -> None:
    _VERIFIED.pop(str(directory), None)
