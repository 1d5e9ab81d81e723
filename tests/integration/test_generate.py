"""parity generate end to end: a correct port, a buggy one, and a sampler with the wrong temperature."""

import json

from conftest import ROOT
from test_cli import TOKEN_ARG, assert_unusable, parity

SAMPLERS = '''import numpy as np
from parity.core.generation import reference_sampler

def correct(logits, temperature, top_k, top_p):
    return reference_sampler(logits, temperature, top_k, top_p)

def temperature_twice(logits, temperature, top_k, top_p):
    return reference_sampler(logits / temperature, temperature, top_k, top_p)
'''


def test_a_correct_port_generates_the_same_tokens(model_dirs):
    result = parity("generate", model_dirs["qwen3"], ROOT / "examples/llama_port.py:build", "--tokens", TOKEN_ARG,
                    "-n", "8", "--json", "-")
    report = json.loads(result.stdout)
    assert result.returncode == 0, result.stderr
    assert report["first_divergence"] is None and report["reference_tokens"] == report["candidate_tokens"]
    assert max(report["teacher_forced"]["kl"]) < 1e-6 and all(report["teacher_forced"]["top1"])


def test_a_buggy_port_diverges_and_is_not_a_near_tie(model_dirs, tmp_path):
    factory = tmp_path / "offset.py"
    factory.write_text("import llama_port\ndef build(path):\n"
                       "    return llama_port.build(path, llama_port.Bugs(causal_mask=False))\n")
    result = parity("generate", model_dirs["llama"], f"{factory}:build", "--tokens", TOKEN_ARG, "-n", "8",
                    "--json", "-", cwd=ROOT / "examples")
    report = json.loads(result.stdout)
    assert result.returncode == 1
    assert report["teacher_forced"]["mean_kl"] > 0.01


def test_a_sampler_with_the_wrong_temperature(model_dirs, tmp_path):
    samplers = tmp_path / "samplers.py"
    samplers.write_text(SAMPLERS)
    common = ["generate", model_dirs["llama"], ROOT / "examples/llama_port.py:build", "--tokens", TOKEN_ARG, "-n", "4",
              "--temperature", "0.7", "--top-k", "20"]
    assert parity(*common, "--sampler", f"{samplers}:correct").returncode == 0
    result = parity(*common, "--sampler", f"{samplers}:temperature_twice", "--json", "-")
    report = json.loads(result.stdout)
    assert result.returncode == 1
    assert report["sampler"]["first_step"] == 0 and abs(report["sampler"]["fitted_temperature"] - 0.49) < 0.02
    assert_unusable(parity(*common, "--temperature", "0"), "argument --temperature: must be a positive number")
