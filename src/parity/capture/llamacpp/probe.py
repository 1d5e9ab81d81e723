"""llama.cpp loads a GGUF first in a child process, so that its abort is a one-line error, not parity's.

llama.cpp answers much of what it cannot handle with GGML_ASSERT, which aborts the
whole process (signal 6), and a file it misreads can make it allocate for
minutes. The header checks (capture/gguf/checks.py) refuse what is known to do
that; the probe catches the rest: before the GGUF is loaded in parity's own
process, a child process loads it and decodes one token, under a time limit and an
address-space limit. A child that aborts, is killed, runs out of time or fails is
one CaptureError naming the file and what llama.cpp said last.

A file that loaded is remembered per file identity in the process, and per content
(with the llama-cpp-python version) in the parity cache's `dequantized/llamacpp-probed/`, so
the probe's ~0.7 s is paid once per file.
"""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
from pathlib import Path

from parity.core.errors import CaptureError
from parity.core.printable import printable

TIMEOUT_S = float(os.environ.get("PARITY_PROBE_TIMEOUT_S", "300"))   # loading and one token of a large model
_PASSED: set[tuple] = set()

# The child imports llama_cpp alone (not parity): load, one context of 32 positions, one token decoded.
_CHILD = r"""
import ctypes, resource, sys
limit = int(sys.argv[2])
resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
import llama_cpp as llama

@llama.llama_log_callback
def log(level, text, _data):
    if level == 4 and text:                                        # errors only
        sys.stderr.write(text.decode("utf-8", errors="replace"))

llama.llama_log_set(log, ctypes.c_void_p(0))
llama.llama_backend_init()
model = llama.llama_model_load_from_file(sys.argv[1].encode(), llama.llama_model_default_params())
if not model:
    sys.exit(3)
vocab = llama.llama_model_get_vocab(model)
if llama.llama_vocab_n_tokens(vocab) <= 0:
    sys.exit(4)
params = llama.llama_context_default_params()
params.n_ctx = params.n_batch = params.n_ubatch = 32
params.n_threads = params.n_threads_batch = 1
context = llama.llama_init_from_model(model, params)
if not context:
    sys.exit(5)
token = (llama.llama_token * 1)(0)
if llama.llama_decode(context, llama.llama_batch_get_one(token, 1)) != 0:
    sys.exit(6)
sys.exit(0)
"""
_FAILURES = {3: "could not load it", 4: "found no vocabulary in it", 5: "could not make a context for it",
             6: "could not decode a token with it"}
_FIX = "the file is damaged or was written wrong: convert the model again"


def probe(gguf: Path, *, timeout_s: float = TIMEOUT_S) -> None:
    """Load `gguf` in llama.cpp in a child process; CaptureError if that child does not come back well."""
    status = os.stat(gguf)
    identity = (str(Path(gguf).resolve()), status.st_dev, status.st_ino, status.st_size, status.st_mtime_ns,
                status.st_ctime_ns)
    if identity in _PASSED:
        return
    marker = _marker(gguf)
    if marker is not None and marker.is_file():
        _PASSED.add(identity)
        return
    address_space = 2 * status.st_size + (4 << 30)
    shown = printable(gguf)
    try:
        child = subprocess.run([sys.executable, "-c", _CHILD, str(gguf), str(address_space)], stdin=subprocess.DEVNULL,
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, timeout=timeout_s,
                               env={**os.environ, "OMP_NUM_THREADS": "1"})
    except subprocess.TimeoutExpired:
        raise CaptureError(f"{shown}: llama.cpp did not load it and decode one token within {timeout_s:.0f} s "
                           "(in a child process, stopped); if the model is very large, allow more time with "
                           "PARITY_PROBE_TIMEOUT_S, otherwise " + _FIX) from None
    said = _last_line(child.stderr)
    if child.returncode < 0:
        number = -child.returncode
        name = signal.Signals(number).name if number in signal.valid_signals() else str(number)
        what = "aborted" if number == signal.SIGABRT else f"was killed by {name}"
        raise CaptureError(f"{shown}: llama.cpp {what} while loading it (signal {number}, in a child process: parity "
                           f"itself goes on){said}; {_FIX}")
    if child.returncode != 0:
        failure = _FAILURES.get(child.returncode, f"failed (exit {child.returncode})")
        raise CaptureError(f"{shown}: llama.cpp {failure}{said}; is it a GGUF model? {_FIX}")
    _PASSED.add(identity)
    if marker is not None:
        _remember(marker)


def _last_line(stderr: bytes) -> str:
    lines = [line.strip() for line in stderr.decode("utf-8", errors="replace").splitlines() if line.strip()]
    return f": {printable(lines[-1])[:200]}" if lines else ""


def _marker(gguf: Path) -> Path | None:
    """The cache's record that this content loaded in this llama-cpp-python; None with the cache off."""
    from parity.capture.gguf import cache as gguf_cache
    from parity.capture.gguf.digest import file_sha256

    if not gguf_cache.enabled():
        return None
    try:
        import llama_cpp

        content = file_sha256(Path(gguf).resolve(), index=gguf_cache.cache_root() / gguf_cache.IDENTITIES)
    except (OSError, ImportError):
        return None
    key = hashlib.sha256(f"{llama_cpp.__version__}\0{content}".encode()).hexdigest()[:32]
    return gguf_cache.cache_root() / gguf_cache.PROBED / key


def _remember(marker: Path) -> None:
    try:
        marker.parent.mkdir(parents=True, exist_ok=True)
        marker.touch()
    except OSError:
        pass
