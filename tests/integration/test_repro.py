"""parity repro end to end: a report, the op alone, and the written test run against real functions."""

import json
import os
import subprocess
import sys

from test_cli import TOKEN_ARG, assert_unusable, parity
from conftest import ROOT

OPS = '''import numpy as np
def rmsnorm(inputs, weights, eps=1e-6):
    x = inputs["embed"].astype(np.float64)
    return weights["weight"] * x / np.sqrt((x * x).mean(-1, keepdims=True) + eps)
def rmsnorm_wrong_eps(inputs, weights):
    return rmsnorm(inputs, weights, eps=1e-5)
'''


def run_written_test(directory, op):
    environment = {key: value for key, value in os.environ.items() if key != "PARITY_REPRO_OP"}
    if op is not None:
        environment["PARITY_REPRO_OP"] = op
    return subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(directory / "test_repro.py")],
                          capture_output=True, text=True, env=environment, cwd=directory, timeout=300)


def test_repro_of_a_norm_epsilon_bug_round_trip(model_dirs, tmp_path):
    factory = tmp_path / "eps.py"
    factory.write_text("import llama_port\ndef build(path):\n"
                       "    return llama_port.build(path, llama_port.Bugs(norm_eps=1e-5))\n")
    report = tmp_path / "report.json"
    checked = parity("check", model_dirs["llama"], f"{factory}:build", "--tokens", TOKEN_ARG, "--json", report,
                     "--save-traces", tmp_path / "traces", cwd=ROOT / "examples")
    assert checked.returncode == 1
    assert json.loads(report.read_text())["reference"]["source"].endswith("reference.safetensors")

    directory = tmp_path / "repro"
    written = parity("repro", report, "-o", directory, "--reference", model_dirs["llama"])
    assert written.returncode == 0, written.stderr
    assert "wrote layers.0.attn_norm alone" in written.stdout
    assert {p.name for p in directory.iterdir()} == {"inputs.safetensors", "expected.safetensors", "candidate.safetensors",
                                                     "weights.safetensors", "test_repro.py", "README.md"}
    ops = tmp_path / "ops.py"
    ops.write_text(OPS)
    assert run_written_test(directory, f"{ops}:rmsnorm").returncode == 0
    failing = run_written_test(directory, f"{ops}:rmsnorm_wrong_eps")
    assert failing.returncode == 1 and "layers.0.attn_norm: rel_l2" in failing.stdout
    unset = run_written_test(directory, None)
    assert unset.returncode == 1 and "set PARITY_REPRO_OP" in unset.stdout

    assert_unusable(parity("repro", report, "-o", directory), "not empty")
    assert_unusable(parity("repro", tmp_path / "nope.json", "-o", tmp_path / "x"), "no such file (given as the report)")


def test_repro_needs_to_know_where_the_reference_is(model_dirs, tmp_path):
    report = tmp_path / "report.json"
    parity("check", model_dirs["llama"], f"{ROOT / 'examples/llama_port.py'}:build", "--tokens", TOKEN_ARG,
           "--json", report)
    assert_unusable(parity("repro", report, "-o", tmp_path / "x"), "there is no divergence to reproduce")
    assert_unusable(parity("repro", report, "-o", tmp_path / "x", "--checkpoint", "layers.0.q"), "pass --reference-trace")
