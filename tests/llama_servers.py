"""Servers started on loopback for a test: llama-cpp-python's OpenAI-compatible server (`python -m llama_cpp.server`),
and any other command that serves HTTP (`started`)."""

from __future__ import annotations

import contextlib
import socket
import struct
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path


# GGUF's value types for the scalars a test rewrites: struct format -> the type id the file stores before it
GGUF_TYPES = {"f": 6, "B": 7}   # float32, bool


def with_metadata_value(gguf: Path, key: str, kind: str, was, value, destination: Path) -> Path:
    """A copy of `gguf` at `destination` whose scalar metadata `key` (struct format `kind`) holds `value` where it
    held `was` (checked): rewritten in place, as a converter that wrote another value would have written it."""
    data = bytearray(gguf.read_bytes())
    name = key.encode()
    at = data.index(name) + len(name)
    assert struct.unpack_from(f"<I{kind}", data, at) == (GGUF_TYPES[kind], was), key
    struct.pack_into(f"<{kind}", data, at + 4, value)
    destination.write_bytes(bytes(data))
    return destination


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextlib.contextmanager
def serving(gguf: Path, *, start_timeout_s: float = 120, flags: tuple[str, ...] = ()):
    """The server's URL while it serves `gguf` (a 512-token context; more of its command-line `flags`), stopped
    after."""
    port = free_port()
    command = [sys.executable, "-m", "llama_cpp.server", "--model", str(gguf), "--host", "127.0.0.1",
               "--port", str(port), "--n_ctx", "512", "--verbose", "false", *flags]
    with started(command, f"http://127.0.0.1:{port}", start_timeout_s) as url:
        yield url


@contextlib.contextmanager
def started(command: list[str], url: str, start_timeout_s: float = 120, ready: str = "/v1/models"):
    """`url` while the server `command` starts answers GET {url}{ready} (llama-server answers /v1/models while it
    still loads: its /health is ready), stopped after."""
    log = tempfile.TemporaryFile()          # not a pipe: a server that logs every request would fill one and stop
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=log)
    try:
        deadline = time.monotonic() + start_timeout_s
        while True:
            try:
                urllib.request.urlopen(f"{url}{ready}", timeout=2).read()
                break
            except OSError:
                if process.poll() is not None or time.monotonic() > deadline:
                    log.seek(0)
                    raise RuntimeError(f"{' '.join(command[1:3])} did not start: {log.read().decode()[-2000:]}")
                time.sleep(0.5)
        yield url
    finally:
        process.terminate()
        process.wait(timeout=30)
        log.close()
