"""`parity capture` writes the trace while the forward runs: what the user sees when the disk fills up,
and that a capture that records nothing leaves no file."""

from __future__ import annotations

import os
import resource
import signal
import subprocess
import sys
from pathlib import Path


from conftest import TOKENS

SRC = Path(__file__).resolve().parents[2] / "src"


def _capture(model: Path, output: Path, *extra: str, file_size_limit: int | None = None):
    def limit() -> None:
        if file_size_limit is not None:
            signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails with EFBIG instead
            resource.setrlimit(resource.RLIMIT_FSIZE, (file_size_limit, file_size_limit))

    return subprocess.run(
        [sys.executable, "-m", "parity", "capture", str(model), "--tokens", ",".join(map(str, TOKENS)),
         "-o", str(output), *extra],
        capture_output=True, text=True, preexec_fn=limit, env={**os.environ, "PYTHONPATH": str(SRC)}, timeout=300)


def test_a_full_disk_is_one_line_and_leaves_neither_the_file_nor_a_temporary_one(model_dirs, tmp_path):
    output = tmp_path / "out" / "reference.safetensors"
    output.parent.mkdir()
    done = _capture(model_dirs["llama"], output, file_size_limit=64 * 1024)
    assert done.returncode == 2, done.stderr
    error = done.stderr.strip().splitlines()[-1]
    assert error.startswith("parity: error: cannot write") and "free space" in error
    assert "Traceback" not in done.stderr
    assert list(output.parent.iterdir()) == []


def test_the_same_capture_with_room_writes_every_checkpoint(model_dirs, tmp_path):
    from parity.core.trace import load_trace

    output = tmp_path / "reference.safetensors"
    done = _capture(model_dirs["llama"], output)
    assert done.returncode == 0, done.stderr
    trace = load_trace(output)
    assert trace.tokens == TOKENS and "logits" in trace and "layers.0.attn_probs" in trace
    assert f"wrote {sum(not n.startswith('raw.') for n in trace.names)} checkpoints" in done.stdout
