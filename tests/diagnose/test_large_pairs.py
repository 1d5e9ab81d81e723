"""The diagnosis of a failing pair of large tensors: the same causes as on small ones, within compare's
memory bound (issue 13: peak RSS <= 2 x the largest checkpoint pair + 300 MB)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np

from parity.core.positions import largest_differences
from parity.core.trace import make_trace, save_trace
from parity.core.metrics import CHUNK_ELEMENTS
from detector_cases import diagnoses, rng

ROWS, WIDTH = 2048, 1024  # 2M elements: more than one chunk of every chunked detector
assert ROWS * WIDTH > CHUNK_ELEMENTS


def _large_base() -> dict:
    generator = rng(3)
    return {f"layers.{i}.out": generator.standard_normal((ROWS, WIDTH)).astype(np.float32) for i in range(2)}


def test_a_large_scaled_or_negated_checkpoint_is_named_as_on_a_small_one():
    base = _large_base()
    scaled = {**base, "layers.1.out": base["layers.1.out"] * np.float32(8 ** 0.5)}
    negated = {**base, "layers.1.out": -base["layers.1.out"]}
    assert diagnoses(base, scaled) == [("scale_factor", "layers.1.out")]
    assert diagnoses(base, negated) == [("sign_flip", "layers.1.out")]


def test_a_large_unexplained_failure_still_gets_its_evidence():
    base = _large_base()
    unrelated = {**base, "layers.1.out": rng(4).standard_normal((ROWS, WIDTH)).astype(np.float32)}
    assert diagnoses(base, unrelated) == [("no_known_cause", "layers.1.out")]


def test_largest_differences_in_chunks_are_the_whole_tensors():
    base = _large_base()
    candidate = base["layers.1.out"].copy()
    planted = [(5, 7, 3.0), (2047, 1023, -9.0), (1500, 0, 6.0)]  # in different chunks
    for row, column, shift in planted:
        candidate[row, column] += np.float32(shift)
    candidate[100, 100] = np.nan
    reference_trace = make_trace(base, {"dtype": "float32"})
    candidate_trace = make_trace({**base, "layers.1.out": candidate}, {"dtype": "float32"})
    found = largest_differences("layers.1.out", reference_trace, candidate_trace, count=4)
    assert [index for index, *_ in found] == [(100, 100), (2047, 1023), (1500, 0), (5, 7)]
    assert found[0][3] == float("inf")  # a NaN facing a number is an infinite difference
    whole = np.abs(candidate.astype(np.float64) - base["layers.1.out"].astype(np.float64))
    assert abs(found[1][3] - whole[2047, 1023]) <= 1e-12 * whole[2047, 1023]


def test_compare_of_a_failing_pair_of_large_tensors_stays_within_the_memory_bound(tmp_path: Path):
    """The child's peak RSS (its VmHWM) while `parity compare` diagnoses three 16 MiB checkpoints
    that fail (values unrelated to the reference's: no detector explains them, so every detector and
    no_known_cause run), against 2 x the largest pair + 300 MiB."""
    rows, width, count = 4096, 1024, 3  # 16 MiB float32 each
    generator = rng(5)
    for side in ("reference", "candidate"):
        tensors = {f"layers.{i}.out": generator.standard_normal((rows, width), dtype=np.float32) for i in range(count)}
        save_trace(make_trace(tensors, {"tokens": list(range(rows)), "producer": side}), tmp_path / f"{side}.safetensors")
        del tensors
    # the child's own peak (VmHWM), read in the child: a forked child's ru_maxrss starts from the resident size
    # of its parent, here the test process
    script = ("import sys; from parity.cli import main; code = main(['compare', sys.argv[1], sys.argv[2]]); "
              "print(next(int(line.split()[1]) for line in open('/proc/self/status') if line.startswith('VmHWM:')), "
              "code, file=sys.stderr)")
    done = subprocess.run([sys.executable, "-c", script, str(tmp_path / "reference.safetensors"),
                           str(tmp_path / "candidate.safetensors")], capture_output=True, text=True,
                          env={**os.environ, "OMP_NUM_THREADS": "1"}, timeout=300)
    peak_kib, code = map(int, done.stderr.strip().splitlines()[-1].split())
    assert code == 1, done.stdout[-2000:] + done.stderr[-2000:]
    assert "no_known_cause" in done.stdout or "no detector explains" in done.stdout, done.stdout[-2000:]
    peak_mib = peak_kib / 1024
    bound_mib = 2 * (2 * rows * width * 4 / 2**20) + 300
    assert peak_mib <= bound_mib, f"peak RSS {peak_mib:.0f} MiB over the bound {bound_mib:.0f} MiB"
