"""A trace written by a port that keeps its weights in float16 (as tinygrad's LLM does by default) and computes
in float32: declared float32, it fails at the embedding with the cause named; declared float16, it passes."""

import json
import shutil

import pytest

pytest.importorskip("transformers")

from conftest import rewritten_metadata  # noqa: E402
from test_cli import TOKEN_ARG, parity  # noqa: E402


@pytest.fixture(scope="module")
def half_weight_trace(model_dirs, tmp_path_factory):
    """The llama model with every weight rounded to float16 and kept in float32, captured in float32."""
    import torch
    from safetensors.torch import load_file, save_file

    directory = tmp_path_factory.mktemp("half_weights")
    shutil.copytree(model_dirs["llama"], directory, dirs_exist_ok=True)
    weights = directory / "model.safetensors"
    save_file({name: tensor.half().float() for name, tensor in load_file(str(weights)).items()}, str(weights))
    trace = directory / "candidate.safetensors"
    result = parity("capture", directory, "--tokens", TOKEN_ARG, "-o", trace)
    assert result.returncode == 0, result.stderr
    return trace


def declared(trace, dtype, directory):
    return rewritten_metadata(trace, directory / f"candidate-{dtype}.safetensors",
                              lambda metadata: {**metadata, "dtype": dtype})


def test_float16_weights_declared_float32_fail_at_the_embedding_with_the_cause(model_dirs, half_weight_trace, tmp_path):
    result = parity("check", model_dirs["llama"], declared(half_weight_trace, "float32", tmp_path), "--tokens",
                    TOKEN_ARG, "--json", "-")
    assert result.returncode == 1, result.stderr
    report = json.loads(result.stdout)
    assert report["first_divergence"]["checkpoint"] == "embed"
    causes = {d["cause"]: d["message"] for d in report["diagnoses"]}
    assert "declared_precision" in causes and "a float16" in causes["declared_precision"]


def test_declared_float16_the_same_trace_passes(model_dirs, half_weight_trace, tmp_path):
    result = parity("check", model_dirs["llama"], declared(half_weight_trace, "float16", tmp_path), "--tokens",
                    TOKEN_ARG, "--json", "-")
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr
