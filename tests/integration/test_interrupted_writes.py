"""SIGKILL a writing command at many moments: the output path holds the previous file, the new
complete file, or nothing; never a partial one; and a rerun is never blocked by what a kill left.

Kills land at random moments of the whole run, and, to be sure some land inside the write, right
after the temporary file appears (the only window in which a partial file could exist).
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from parity.core.trace import make_trace, save_trace

PREVIOUS = b'{"previous": "a good report from an earlier run"}\n'
TRIALS = 12


@pytest.fixture(scope="module")
def traces(tmp_path_factory):
    """Two traces whose comparison writes a JSON report with per-position data (about 80 kB)."""
    root = tmp_path_factory.mktemp("interrupted")
    rng = np.random.default_rng(0)
    tokens = list(range(64))
    tensors = {"embed": rng.standard_normal((64, 64)).astype(np.float32)}
    for layer in range(4):
        for kind in ("attn_norm", "q", "k", "v", "attn_out", "mlp_norm", "mlp_out", "out"):
            tensors[f"layers.{layer}.{kind}"] = rng.standard_normal((64, 64)).astype(np.float32)
    tensors["logits"] = rng.standard_normal((64, 96)).astype(np.float32)
    reference = make_trace(tensors, {"tokens": tokens})
    candidate = make_trace({name: value + 1e-3 * rng.standard_normal(value.shape).astype(np.float32)
                            for name, value in tensors.items()}, {"tokens": tokens})
    save_trace(reference, root / "reference.safetensors")
    save_trace(candidate, root / "candidate.safetensors")
    complete = root / "complete.json"
    finished = subprocess.run(_command(root, complete), capture_output=True, env=_environment())
    assert finished.returncode in (0, 1) and complete.exists(), finished.stderr
    return root, complete.read_bytes()


def _command(root, output, force=False):
    return [sys.executable, "-m", "parity", "compare", str(root / "reference.safetensors"),
            str(root / "candidate.safetensors"), "--json", str(output), *(["--force"] if force else [])]


def _environment():
    return {**os.environ, "OMP_NUM_THREADS": "1"}


def _kill_inside_the_write(process, directory, rng) -> bool:
    """Wait for the temporary file to appear, then SIGKILL within a few milliseconds; True if the
    process was still running when killed."""
    deadline = time.monotonic() + 30
    while process.poll() is None and time.monotonic() < deadline:
        if any(name.startswith(".parity-tmp-") for name in os.listdir(directory)):
            time.sleep(rng.uniform(0, 0.003))
            break
    alive = process.poll() is None
    process.send_signal(signal.SIGKILL)
    process.wait()
    return alive


def _kill_at_random(process, rng, run_s: float) -> bool:
    time.sleep(rng.uniform(0, run_s))
    alive = process.poll() is None
    process.send_signal(signal.SIGKILL)
    process.wait()
    return alive


@pytest.mark.slow
def test_a_killed_write_leaves_the_previous_file_or_none_never_a_partial_one(traces, tmp_path):
    root, complete = traces
    rng = random.Random(1234)
    started = time.monotonic()
    subprocess.run(_command(root, tmp_path / "timing.json"), capture_output=True, env=_environment())
    run_s = time.monotonic() - started
    killed_inside = interrupted_writes = 0
    for trial in range(TRIALS):
        directory = tmp_path / f"trial{trial}"
        directory.mkdir()
        output = directory / "report.json"
        with_previous = trial % 2 == 0
        if with_previous:
            output.write_bytes(PREVIOUS)
        process = subprocess.Popen(_command(root, output, force=with_previous), stdout=subprocess.DEVNULL,
                                   stderr=subprocess.DEVNULL, env=_environment())
        if trial % 3 == 2:
            _kill_at_random(process, rng, run_s)
        else:
            killed_inside += _kill_inside_the_write(process, directory, rng)

        allowed = {complete, PREVIOUS} if with_previous else {complete}
        if output.exists():
            assert output.read_bytes() in allowed, f"trial {trial}: a partial or foreign file at the output path"
        else:
            assert not with_previous, f"trial {trial}: the previous good file was destroyed"
        # Whatever the kill left (a hidden temporary file at most) does not block a rerun.
        if not output.exists():
            rerun = subprocess.run(_command(root, output), capture_output=True, env=_environment())
            assert rerun.returncode in (0, 1) and output.read_bytes() == complete, rerun.stderr
        leftovers = [name for name in os.listdir(directory) if name != "report.json"]
        assert all(name.startswith(".parity-tmp-") for name in leftovers), leftovers
        interrupted_writes += bool(leftovers)
    assert killed_inside >= TRIALS // 3   # the test did hit the write window, not just the start-up
    print(f"{killed_inside} kills after the temporary file appeared; {interrupted_writes} left one behind")
