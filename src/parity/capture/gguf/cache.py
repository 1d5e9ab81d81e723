"""A dequantized copy of each GGUF file, so that transformers dequantizes it once: a content-addressed store.

transformers reads a `.gguf` by dequantizing every tensor in Python: 15-20 s for
SmolLM2-135M on 2 cores, at every run. The first run saves what it built (config,
float32 safetensors weights, tokenizer) as a model directory under the parity
cache; later runs load that directory in well under a second.

The store can be trusted because nothing about it is taken on faith:
  - an entry's key is the SHA-256 of the GGUF's whole content (with this layout
    and the transformers version that read it), never its name, size or time; the
    content hash is computed once per file identity (digest.py, remembered under
    `identities/`), so a GGUF rewritten with its size and mtime kept is a new key;
  - every file of an entry carries its size and SHA-256 in the entry's manifest,
    checked before the entry is used (cache_entry.py); links, FIFOs and files the
    manifest does not list are refused;
  - an entry that fails its check is removed and rebuilt from the GGUF, with a
    note on standard error: a damaged cache is never blamed on the GGUF and never
    has to be deleted by hand;
  - an entry is made in a temporary folder beside its final place and renamed into
    it, so an interrupted run leaves no half-written copy.

`parity cache verify` checks every entry; `parity cache clear` removes them.
`PARITY_NO_CACHE=1` turns the cache off, and `PARITY_CACHE` moves it (default
`~/.cache/parity`; the cache lives in its `dequantized/` folder).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import shutil
import stat
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from parity.capture.gguf import cache_entry
from parity.capture.gguf.digest import file_sha256
from parity.core.printable import printable

IDENTITIES = "identities"
PROBED = "llamacpp-probed"       # GGUF contents llama.cpp loaded in a child process (capture/llamacpp/probe.py)
_ENTRY_NAME = re.compile(r"^[A-Za-z0-9._-]{0,60}-[0-9a-f]{20,64}$")
_TEMPORARY = ".parity-tmp-"


def cache_root() -> Path:
    base = os.environ.get("PARITY_CACHE") or Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "parity"
    return Path(base) / "dequantized"


def enabled() -> bool:
    return os.environ.get("PARITY_NO_CACHE", "") in ("", "0")


def note(message: str) -> None:
    """A line on standard error about the cache; the run goes on."""
    print(f"parity: note: {printable(message)}", file=sys.stderr, flush=True)


def cached_directory(gguf: Path, *, on_damage: Callable[[str], None] = note) -> Path | None:
    """The verified dequantized copy of `gguf`, if one was made; None otherwise or with the cache off.
    An entry that fails its check is removed (`on_damage` says so), and the caller rebuilds it."""
    if not enabled():
        return None
    try:
        directory = cache_root() / _entry_name(gguf)
        if not os.path.lexists(directory):
            return None
        problem = cache_entry.damage(directory, gguf_sha256=_content_sha256(gguf), transformers_version=_transformers())
    except OSError:
        return None
    if problem is None:
        return directory
    discard(directory, problem, on_damage=on_damage)
    return None


def discard(directory: Path, reason: str, *, on_damage: Callable[[str], None] = note) -> None:
    """Remove a damaged entry (a link is unlinked, never followed) and say so; the GGUF is read instead."""
    removed = _remove(directory)
    on_damage(f"the cached copy {directory} is damaged ({reason}); "
              + ("removed it, and the model is read from the GGUF again (the copy is rebuilt)" if removed else
                 "it could not be removed, so the cache is not used: run 'parity cache clear'"))


def store(gguf: Path, model: Any, tokenizer_loader: Callable[[], Any]) -> Path | None:
    """Save `model` (loaded from `gguf`) and its tokenizer as the cached copy; None when the cache is off
    or cannot be written (the run goes on without it: a cache is never a reason to fail)."""
    if not enabled():
        return None
    try:
        directory = cache_root() / _entry_name(gguf)
        directory.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=_TEMPORARY, dir=directory.parent))
    except OSError:
        return None
    try:
        save_dequantized(model, staging)
        try:
            tokenizer_loader().save_pretrained(staging)
        except Exception:  # noqa: BLE001 - a GGUF without a usable tokenizer is cached without one
            pass
        source = {"sha256": _content_sha256(gguf), "size": os.stat(gguf).st_size, "name": printable(gguf.name)}
        cache_entry.write_manifest(staging, source, _transformers())
        os.rename(staging, directory)
        return directory
    except OSError:   # another run stored it first, or the disk is full: use the other's if it is whole
        whole = os.path.lexists(directory) and cache_entry.damage(directory) is None
        return directory if whole else None
    finally:
        shutil.rmtree(staging, ignore_errors=True)


# --- parity cache verify | clear -----------------------------------------------------


@dataclass(frozen=True)
class EntryCheck:
    name: str
    size_bytes: int
    problem: str | None        # None: whole

    def __bool__(self) -> bool:
        return self.problem is None

    def __repr__(self) -> str:
        return f"<EntryCheck {self.name} {'whole' if self else self.problem}>"


def verify_all() -> list[EntryCheck]:
    """Every entry, each file hashed against its manifest; nothing is changed."""
    root = cache_root()
    checks = []
    for entry in _entries(root):
        path = root / entry
        cache_entry.forget(path)
        checks.append(EntryCheck(entry, _size_bytes(path), cache_entry.damage(path)))
    return checks


def clear() -> tuple[int, int, list[str]]:
    """Remove every entry, the digest index and leftovers of interrupted runs:
    (entries removed, bytes freed, names left alone because parity did not make them)."""
    root = cache_root()
    removed = freed = 0
    others = []
    if not root.is_dir():
        return 0, 0, []
    for name in sorted(os.listdir(root)):
        path = root / name
        if _ENTRY_NAME.match(name) or name in (IDENTITIES, PROBED) or name.startswith(_TEMPORARY):
            size = _size_bytes(path)
            if _remove(path):
                removed += bool(_ENTRY_NAME.match(name))
                freed += size
        else:
            others.append(name)
    return removed, freed, others


def _entries(root: Path) -> list[str]:
    try:
        return sorted(name for name in os.listdir(root) if _ENTRY_NAME.match(name))
    except OSError:
        return []


def _size_bytes(path: Path) -> int:
    if os.path.islink(path) or not path.is_dir():
        return os.lstat(path).st_size if os.path.lexists(path) else 0
    total = 0
    for directory, _, files in os.walk(path):
        for name in files:
            with contextlib.suppress(OSError):
                total += os.lstat(os.path.join(directory, name)).st_size
    return total


def _remove(path: Path) -> bool:
    """Remove an entry, a link (unlinked, never followed) or a stray file; False when it cannot be."""
    try:
        status = os.lstat(path)
        if stat.S_ISDIR(status.st_mode):
            trash = path.with_name(f"{_TEMPORARY}trash-{path.name}-{os.getpid()}")
            os.rename(path, trash)   # gone from its name at once; the slow part follows
            cache_entry.forget(path)
            shutil.rmtree(trash)
        else:
            os.unlink(path)
        return True
    except FileNotFoundError:
        return True
    except OSError:
        return False


# --- keys ----------------------------------------------------------------------------


def _content_sha256(gguf: Path) -> str:
    return file_sha256(Path(gguf).resolve(), index=cache_root() / IDENTITIES)


def _transformers() -> str:
    import transformers

    return transformers.__version__


def _entry_name(gguf: Path) -> str:
    """`<stem>-<key>`: the key hashes the layout, the transformers version and the GGUF's content."""
    key = hashlib.sha256(f"{cache_entry.LAYOUT}\0{_transformers()}\0{_content_sha256(gguf)}".encode()).hexdigest()
    stem = re.sub(r"[^A-Za-z0-9._-]", "_", Path(gguf).stem)[:60].lstrip(".")
    return f"{stem}-{key[:32]}"


def save_dequantized(model: Any, directory: Path) -> None:
    """config.json and model.safetensors in float32, which holds every dequantized value exactly
    (transformers will not save a model it read from a GGUF itself). A tensor shared by two names
    (tied embeddings) is stored once; transformers ties it again on load."""
    import torch
    from safetensors.torch import save_file

    config = model.config.to_dict()
    config.pop("quantization_config", None)
    config["dtype"] = "float32"
    if not config.get("architectures"):   # as save_pretrained writes it: other readers (mistral.rs) require it
        config["architectures"] = [type(model).__name__]
    model.config.__class__.from_dict(config).save_pretrained(directory)
    if getattr(model, "generation_config", None) is not None:
        model.generation_config.save_pretrained(directory)
    tensors, seen = {}, set()
    for name, tensor in model.state_dict().items():
        if tensor.data_ptr() in seen:
            continue
        seen.add(tensor.data_ptr())
        tensors[name] = tensor.detach().to(torch.float32).contiguous()
    save_file(tensors, str(directory / "model.safetensors"), metadata={"format": "pt"})
