"""A Llama in plain C (examples/c/llama.c), written as C ports are: one position at a time through a KV cache,
loops that sum one product at a time, q and k in the interleaved RoPE layout, its trace written by
examples/c/parity_trace.h. On SmolLM2's weights it passes: before the float32 calibration rounded as such sums
do (capture/hf/one_term_sums.py) it failed 1 of 483 checkpoints, at layers.2.mlp_out, where a massive activation
lives. A planted RoPE base is still named."""

import json
import os
import shutil
import subprocess
import sys

import pytest

from conftest import ROOT, STRICT
from test_cli import parity

pytest.importorskip("transformers")

SOURCE = ROOT / "examples" / "c"
sys.path.insert(0, str(SOURCE))   # export_weights.py
SMOLLM2_TOKENS = "1,504,3458,282,2784,28,253,1184,314,1953,30,2115,260,253,2151,30"


@pytest.fixture(scope="module")
def programs(tmp_path_factory):
    """The C port compiled as it is and with its planted bug."""
    compiler = shutil.which(os.environ.get("CC", "cc"))
    if compiler is None:
        if STRICT:
            raise RuntimeError("no C compiler (cc, or $CC): the set-up builds llama-cpp-python with one")
        pytest.skip("no C compiler")
    directory = tmp_path_factory.mktemp("c_port")
    built = {}
    for name, flags in (("correct", []), ("rope_base", ["-DPLANT_BUG=1"])):
        built[name] = directory / name
        subprocess.run([compiler, "-O2", *flags, "-o", str(built[name]), str(SOURCE / "llama.c"), "-lm"],
                       check=True, capture_output=True)
    return built


@pytest.fixture(scope="module")
def smollm2(smollm2_model_dir, tmp_path_factory):
    """SmolLM2's float32 model directory beside the C port's weights file (model.bin) made from it."""
    import export_weights

    directory = tmp_path_factory.mktemp("smollm2_c_port")
    for path in smollm2_model_dir.iterdir():
        (directory / path.name).symlink_to(path)
    export_weights.export(directory, directory / "model.bin")
    return directory


def trace(program, weights, tokens, directory):
    result = subprocess.run([str(program), str(weights), str(directory), tokens], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    return directory


def check(model, trace_directory):
    result = parity("check", model, trace_directory, "--json", "-")
    return result, json.loads(result.stdout) if result.stdout.startswith("{") else None


def test_the_c_port_passes_on_a_tiny_llama(programs, model_dirs, tmp_path):
    import export_weights

    export_weights.export(model_dirs["llama"], tmp_path / "model.bin")
    result, report = check(model_dirs["llama"], trace(programs["correct"], tmp_path / "model.bin", "0,17,5,40,8,9",
                                                      tmp_path / "trace"))
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-2000:]
    assert any("rope_pairs" in note for note in report["notes"])          # q and k read in its layout


def test_the_c_port_passes_on_smollm2_where_a_massive_activation_lives(programs, smollm2, tmp_path):
    result, report = check(smollm2, trace(programs["correct"], smollm2 / "model.bin", SMOLLM2_TOKENS,
                                          tmp_path / "trace"))
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-2000:]
    assert report["summary"]["passed"] == 483 and report["summary"]["failed"] == 0
    assert "one-term sums" in report["checkpoints"][0]["tolerance"]["basis"]


def test_a_planted_rope_base_in_the_c_port_is_named(programs, smollm2, tmp_path):
    result, report = check(smollm2, trace(programs["rope_base"], smollm2 / "model.bin", SMOLLM2_TOKENS,
                                          tmp_path / "trace"))
    assert result.returncode == 1 and report["first_divergence"]["checkpoint"] == "layers.0.q_rope"
    assert [d["cause"] for d in report["diagnoses"]][:1] == ["rope_theta"]
