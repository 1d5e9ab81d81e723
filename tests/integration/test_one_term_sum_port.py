"""A float32 port that sums each projection's products one at a time (as a C loop does: llama2.c's `matmul`)
rounds more than PyTorch's blocked BLAS where one term dominates a sum: on SmolLM2's weights, where a massive
activation lives in channel 507, 16 tokens of it failed 1 of 483 checkpoints against a calibration run of
blocked sums. The float32 calibration rounds as one-term sums do (capture/hf/one_term_sums.py): it passes, and a
planted bug in the same port still fails."""

import json

import pytest

from test_cli import TOKEN_ARG, parity

pytest.importorskip("transformers")

SMOLLM2_TOKENS = "1,504,3458,282,2784,28,253,1184,314,1953,30,2115,260,253,2151,30"


@pytest.fixture(scope="module")
def smollm2_directory(smollm2_reference, tmp_path_factory):
    """SmolLM2 as transformers reads its GGUF, saved as a float32 model directory."""
    directory = tmp_path_factory.mktemp("smollm2_float32")
    smollm2_reference.model.save_pretrained(directory)
    return directory


def port(model, output, tokens, *options):
    import numpy_llama

    numpy_llama.main([str(model), str(output), "--tokens", tokens, "--one-term-sums", *options])
    return output


def test_a_port_summing_one_term_at_a_time_passes_on_smollm2(smollm2_directory, tmp_path):
    trace = port(smollm2_directory, tmp_path / "trace", SMOLLM2_TOKENS)
    result = parity("check", smollm2_directory, trace, "--json", "-")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-2000:]
    report = json.loads(result.stdout)
    assert report["summary"]["failed"] == 0 and report["summary"]["passed"] == 483
    assert "sums one term at a time" in report["checkpoints"][0]["tolerance"]["basis"]


def test_a_planted_bug_in_the_same_port_still_fails(model_dirs, tmp_path):
    trace = port(model_dirs["llama"], tmp_path / "trace", TOKEN_ARG, "--bug", "rope_interleaved")
    result = parity("check", model_dirs["llama"], trace, "--json", "-")
    report = json.loads(result.stdout)
    assert result.returncode == 1 and report["first_divergence"]["checkpoint"] == "layers.0.q_rope"
    assert [d["cause"] for d in report["diagnoses"]][:1] == ["rope_layout"]
