"""`parity kernel` end to end: the grid and pattern, the JSON, exit codes 0, 1 and 2."""

import json
import subprocess
import sys

import pytest
from conftest import ROOT

KERNELS = ROOT / "tests" / "kernel" / "hand_kernels.py"


def parity(*args):
    return subprocess.run([sys.executable, "-m", "parity", *map(str, args)], capture_output=True, text=True, timeout=600)


@pytest.mark.slow
def test_a_tiled_kernel_fails_with_the_pattern_and_writes_the_json(tmp_path):
    out = tmp_path / "kernel.json"
    result = parity("kernel", "rms_norm", f"{KERNELS}:rms_norm_tiled", "--lengths", "13,64,127,257",
                    "--dtypes", "float32,bfloat16", "--json", out)
    assert result.returncode == 1, result.stderr
    assert "fails at T = 13, 127, 257: lengths that are not a multiple of 64" in result.stdout
    grid = [line.split() for line in result.stdout.splitlines() if line.split() and line.split()[0] in ("13", "64")]
    assert grid[0][1:3] == ["✗", "fwd"] and grid[1][1:] == ["✓"] * 4
    data = json.loads(out.read_text())
    assert data["verdict"] == "failed" and len(data["cases"]) == 4 * 2 * 2
    first = data["cases"][0]
    assert set(first) == {"dims", "dtype", "condition", "forward", "backward"}
    assert first["dims"]["T"] == 13 and first["forward"]["passed"] is False


@pytest.mark.slow
def test_a_correct_kernel_passes_with_bench_on_stdout_json():
    result = parity("kernel", "softmax", f"{KERNELS}:softmax", "--lengths", "13,64", "--bench", "--json", "-")
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    assert data["verdict"] == "passed" and set(data["timing"]) >= {"candidate_ms", "reference_ms", "speedup"}


@pytest.mark.slow
def test_unusable_input_exits_2_in_one_line():
    for args, words in ((("nope", f"{KERNELS}:softmax"), "unknown op 'nope'"),
                        (("softmax", f"{KERNELS}:missing"), "has no function 'missing'"),
                        (("softmax", f"{KERNELS}:softmax", "--dtypes", "float8"), "--dtypes: unknown float8"),
                        (("softmax", f"{KERNELS}:softmax", "--lengths", "0"), "--lengths needs positive integers")):
        result = parity("kernel", *args)
        assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
        assert words in result.stderr.strip().splitlines()[-1], result.stderr
