"""User code through the CLI: what only a child process survives (a C exit, a crash, a hang), prints kept
out of `--json -`, sizes refused before they are allocated, and a port that exits. Each run is a
subprocess: exit code, one line, time and the parity process's own peak memory (VmHWM)."""

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

import user_code
from limited_run import MEASURED_CLI

pytest.importorskip("transformers")
ROOT = Path(__file__).resolve().parents[2]


def parity(*args, cwd, timeout_s=300):
    with tempfile.NamedTemporaryFile("r") as peak:
        started = time.monotonic()
        result = subprocess.run([sys.executable, "-c", MEASURED_CLI, *map(str, args)], capture_output=True, text=True,
                                cwd=cwd, timeout=timeout_s,
                                env={**os.environ, "PYTHONPATH": str(ROOT / "src"), "OMP_NUM_THREADS": "1",
                                     "PARITY_TEST_PEAK": peak.name})
        kib = peak.read().strip()
    return result, time.monotonic() - started, int(kib) / 1024 if kib else float("inf")


def one_line_error(result, says):
    lines = result.stderr.strip().splitlines()
    errors = [line for line in lines if line.startswith("parity: error:")]
    assert result.returncode == 2 and len(errors) == 1 and lines[-1] == errors[0], result.stderr
    assert says in errors[0] and "Traceback" not in result.stderr, errors[0]
    return errors[0]


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    directory = tmp_path_factory.mktemp("user-code")
    user_code.write_module(directory)
    user_code.write_module(directory, factories=True, examples=str(ROOT / "examples"))
    return directory


@pytest.mark.parametrize("name, says", [
    ("c_exit_0", "ended parity's child process during case T=13 float32 normal (exit status 0"),
    ("segfault", "(killed by SIGSEGV"),
    ("abort", "(killed by SIGABRT"),
    ("sleeps", "did not finish case T=13 float32 normal within 3 s (stopped)"),
])
def test_a_kernel_that_kills_or_hangs_its_process_is_one_line(work, name, says):
    result, elapsed_s, _ = parity("kernel", "softmax", f"kernels_under_test.py:{name}", "--lengths", "13", "--dtypes",
                                  "float32", "--timeout", "3", cwd=work)
    line = one_line_error(result, says)
    assert "allow more time with --timeout" in line or "must return its result" in line
    assert elapsed_s < 60


def test_a_kernels_prints_stay_out_of_json_on_stdout(work):
    result, _, _ = parity("kernel", "softmax", "kernels_under_test.py:correct_noisy", "--lengths", "13", "--dtypes",
                          "float32", "--json", "-", cwd=work)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["verdict"] == "passed"
    assert "kernel says hi" in result.stderr and "raw write to fd 1" in result.stderr


def test_a_kernel_raising_keyboard_interrupt_in_its_child_is_a_finding(work):
    result, _, _ = parity("kernel", "softmax", "kernels_under_test.py:keyboard_interrupt", "--lengths", "13",
                          "--dtypes", "float32", cwd=work)
    assert result.returncode == 1 and "raised KeyboardInterrupt" in result.stdout, result.stdout + result.stderr


@pytest.mark.parametrize("args, says", [
    (["--lengths", "100000000"], "--lengths 100,000,000: one softmax case at T = 100,000,000 needs about"),
    (["--lengths", "1000000000"], "--lengths 1,000,000,000"),
    (["--lengths", str(2**70)], "--lengths 1.18e+21"),
])
def test_kernel_lengths_that_cannot_fit_are_one_line_in_little_memory(work, args, says):
    result, _, peak_mib = parity("kernel", "softmax", "kernels_under_test.py:correct", *args, cwd=work)
    one_line_error(result, says)
    assert peak_mib < 400


@pytest.mark.parametrize("name, code, says", [
    ("os_exit", 2, "called os._exit(0)"),
    ("c_exit", 2, "ended parity's child process during building the candidate (exit status 0"),
    ("sleeps", 2, "did not finish building the candidate within 3 s"),
    ("returns_none", 2, "returned NoneType, not a torch.nn.Module"),
    ("no_config", 2, "has no .config"),
    ("forward_exits", 1, ""),
    ("noisy", 0, ""),
])
def test_a_sanity_candidate_that_exits_hangs_or_prints(work, name, code, says):
    # the factories build a transformers config, whose import is the factory's time: seconds on a loaded machine;
    # only the one that hangs is held to 3 s
    timeout = "3" if name == "sleeps" else "120"
    result, _, _ = parity("sanity", f"factories.py:{name}", "--timeout", timeout, "--seq-length", "8", cwd=work)
    if code == 2:
        one_line_error(result, says)
    else:
        assert result.returncode == code, result.stdout + result.stderr
        assert result.stdout.count("\n") == 1   # the one-line verdict alone: the factory's print went to stderr
    if name == "forward_exits":
        assert "called os._exit(0)" in parity("sanity", f"factories.py:{name}", "-v", "--seq-length", "8",
                                              cwd=work)[0].stdout


@pytest.mark.parametrize("args, says", [
    (["--seq-length", "10000000"], "--batch-size 2 x --seq-length 10,000,000 is 20,000,000 random tokens"),
    (["--batch-size", "1000000"], "--batch-size 1,000,000 x --seq-length 32 is 32,000,000 random tokens"),
    (["--seed", str(2**70)], "--seed must be an integer from 0 to 2^53"),
    (["--batch-size", "64", "--seq-length", "60000"], "needs about"),
])
def test_sanity_sizes_that_cannot_run_are_one_line_in_little_memory(work, args, says):
    result, elapsed_s, peak_mib = parity("sanity", "factories.py:correct", *args, cwd=work)
    one_line_error(result, says)
    assert peak_mib < 400 and elapsed_s < 60


def test_bench_refuses_more_positions_than_the_model_takes(tmp_path):
    import tiny_models

    model = tiny_models.save("llama", tmp_path / "model", max_position_embeddings=64)
    result, _, _ = parity("bench", model, f"{ROOT / 'examples' / 'llama_port.py'}:build", "--prompt-tokens", "100",
                          "--repeats", "1", "--threads", "1", cwd=tmp_path)
    one_line_error(result, "--prompt-tokens 100 + --decode-tokens 32 is 132 positions, more than")


PORT = '''
import os, sys
sys.path.insert(0, {examples!r})
import llama_port

def build(path):
    model = llama_port.build(path)
    forward = model.forward
    def noisy(*args, **kwargs):
        print("port says hi")
        return forward(*args, **kwargs)
    model.forward = noisy
    return model

def exits(path):
    model = llama_port.build(path)
    model.forward = lambda *args, **kwargs: sys.exit(0)
    return model

def hard_exit(path):
    model = llama_port.build(path)
    model.forward = lambda *args, **kwargs: os._exit(0)
    return model
'''


@pytest.mark.parametrize("name, says", [("exits", "raised SystemExit: 0"), ("hard_exit", "called os._exit(0)")])
def test_a_port_whose_forward_exits_is_one_line_not_a_pass(model_dirs, tmp_path, name, says):
    (tmp_path / "port.py").write_text(PORT.format(examples=str(ROOT / "examples")))
    result, _, _ = parity("check", model_dirs["llama"], f"port.py:{name}", "--tokens", "1,2,3", cwd=tmp_path)
    one_line_error(result, says)


def test_a_ports_prints_stay_out_of_json_on_stdout(model_dirs, tmp_path):
    (tmp_path / "port.py").write_text(PORT.format(examples=str(ROOT / "examples")))
    result, _, _ = parity("check", model_dirs["llama"], "port.py:build", "--tokens", "1,2,3", "--json", "-",
                          "--decode-steps", "0", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    json.loads(result.stdout)
    assert "port says hi" in result.stderr
