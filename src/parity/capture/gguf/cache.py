"""A dequantized copy of each GGUF file, so that transformers dequantizes it once.

transformers reads a `.gguf` by dequantizing every tensor in Python: 15-20 s for
SmolLM2-135M on 2 cores, at every run. The first run saves what it built (config,
float32 safetensors weights, tokenizer) as a model directory under the parity
cache; later runs load that directory in well under a second. The directory is
made in a temporary folder beside its final place and renamed into it, so an
interrupted run leaves no half-written copy, and two runs at once cannot see one.

The key is the file's identity: its resolved path, size, modification time, and
a hash of its first and last MiB, plus the transformers version that read it. A
changed file gets a new copy; `PARITY_NO_CACHE=1` turns the cache off, and
`PARITY_CACHE` moves it (default `~/.cache/parity`).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Callable

LAYOUT = "1"          # bump when what is stored changes
_SAMPLE_BYTES = 1 << 20


def cache_root() -> Path:
    base = os.environ.get("PARITY_CACHE") or Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "parity"
    return Path(base) / "dequantized"


def enabled() -> bool:
    return os.environ.get("PARITY_NO_CACHE", "") in ("", "0")


def cached_directory(gguf: Path) -> Path | None:
    """The dequantized copy of `gguf`, if one was made; None otherwise or with the cache off."""
    if not enabled():
        return None
    directory = cache_root() / _key(gguf)
    return directory if (directory / "config.json").is_file() else None


def store(gguf: Path, model: Any, tokenizer_loader: Callable[[], Any]) -> Path | None:
    """Save `model` (loaded from `gguf`) and its tokenizer as the cached copy; None when the cache is off
    or cannot be written (the run goes on without it: a cache is never a reason to fail)."""
    if not enabled():
        return None
    directory = cache_root() / _key(gguf)
    try:
        directory.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=".parity-tmp-", dir=directory.parent))
    except OSError:
        return None
    try:
        _save_weights(model, staging)
        try:
            tokenizer_loader().save_pretrained(staging)
        except Exception:  # noqa: BLE001 - a GGUF without a usable tokenizer is cached without one
            pass
        (staging / "SOURCE").write_text(f"{gguf.resolve()}\n", encoding="utf-8")
        os.rename(staging, directory)
        return directory
    except OSError:
        return directory if (directory / "config.json").is_file() else None  # another run stored it first
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _save_weights(model: Any, directory: Path) -> None:
    """config.json and model.safetensors in float32, which holds every dequantized value exactly
    (transformers will not save a model it read from a GGUF itself). A tensor shared by two names
    (tied embeddings) is stored once; transformers ties it again on load."""
    import torch
    from safetensors.torch import save_file

    config = model.config.to_dict()
    config.pop("quantization_config", None)
    config["dtype"] = "float32"
    model.config.__class__.from_dict(config).save_pretrained(directory)
    tensors, seen = {}, set()
    for name, tensor in model.state_dict().items():
        if tensor.data_ptr() in seen:
            continue
        seen.add(tensor.data_ptr())
        tensors[name] = tensor.detach().to(torch.float32).contiguous()
    save_file(tensors, str(directory / "model.safetensors"), metadata={"format": "pt"})


def _key(gguf: Path) -> str:
    import transformers

    resolved = gguf.resolve()
    status = resolved.stat()
    digest = hashlib.sha256()
    for part in (LAYOUT, str(resolved), str(status.st_size), str(status.st_mtime_ns), transformers.__version__):
        digest.update(part.encode() + b"\0")
    with open(resolved, "rb") as file:
        digest.update(file.read(_SAMPLE_BYTES))
        if status.st_size > _SAMPLE_BYTES:
            file.seek(max(_SAMPLE_BYTES, status.st_size - _SAMPLE_BYTES))
            digest.update(file.read(_SAMPLE_BYTES))
    return f"{resolved.stem[:60]}-{digest.hexdigest()[:20]}"
