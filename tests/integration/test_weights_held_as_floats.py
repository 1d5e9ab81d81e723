"""A candidate that loads a converted file and dequantizes it as it loads, checked against the original float
model: transformers reading a GGUF that llama.cpp's own converter wrote (Q8_0, F16) or its quantizer made
(Q4_K_M), code nobody here wrote.

Its weights are plain float32 tensors, the reference's rounded to the file's grid. At first contact the Q8_0 one
was "not the reference's ... it loaded other weights or converted them wrongly" (weight_mismatch) and the F16 one
"holds it in float16 while it declares float32" (declared_precision), on correct conversions; and
--quantized-reference refused both. The grid is now read from the weight's values (diagnose/weight_grid.py):
named weight_rounding, and with --quantized-reference the reference computes with those weights and passes."""

import os
import re

import pytest

pytest.importorskip("transformers")

import gguf_models  # noqa: E402
from conftest import need  # noqa: E402
from test_quantized_builds import check, diagnosis_at_first_divergence, weights_taken  # noqa: E402

FACTORIES = '''from pathlib import Path

import torch
import transformers

DIRECTORY = Path({directory!r})


def transformers_reading(outtype):
    return transformers.AutoModelForCausalLM.from_pretrained(DIRECTORY, gguf_file=f"model-{{outtype}}.gguf",
                                                             dtype=torch.float32).eval()


def q8_0(path):
    return transformers_reading("q8_0")


def f16(path):
    return transformers_reading("f16")


def q4_k_m(path):
    return transformers_reading("q4_k_m")


def q8_0_one_weight_left_unloaded(path):     # a loader that left layer 1's down projection as initialized
    model = transformers_reading("q8_0")
    with torch.no_grad():
        torch.manual_seed(0)
        model.model.layers[1].mlp.down_proj.weight.normal_(std=0.02)
    return model


def q8_0_of_another_layer(path):     # a loader that read layer 1's q into layer 0's
    model = transformers_reading("q8_0")
    with torch.no_grad():
        model.model.layers[0].self_attn.q_proj.weight.copy_(model.model.layers[1].self_attn.q_proj.weight)
    return model
'''


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    """The tiny Llama (float32), its Q8_0 and F16 GGUFs by llama.cpp's converter, and the factories that load
    them in transformers."""
    directory = gguf_models.model_dir("llama")
    for outtype in ("q8_0", "f16"):
        gguf_models.gguf("llama", outtype)
    factories = tmp_path_factory.mktemp("held_as_floats") / "loaders.py"
    factories.write_text(FACTORIES.format(directory=str(directory)))
    return directory, factories


@pytest.mark.parametrize("factory, grid", [("q8_0", "8-bit levels, a step and an offset per group of 32"),
                                           ("f16", "float16 values")])
def test_a_converted_file_loaded_as_floats_is_named_as_its_weights_rounding(converted, capsys, factory, grid):
    code, report = check(converted, capsys, factory)
    at, [found] = diagnosis_at_first_divergence(report)
    assert code == 1 and at == "embed" and found["cause"] == "weight_rounding", found
    assert f"embed.weight {grid} (read from its values, held as float32)" in found["message"]
    assert "as far from the reference's as rounding to its grid makes it" in found["message"]


@pytest.mark.parametrize("factory", ["q8_0", "f16"])
def test_with_its_weights_in_the_reference_a_correct_conversion_passes(converted, capsys, factory):
    code, report = check(converted, capsys, factory, "--quantized-reference")
    assert code == 0, report["first_divergence"]
    taken = weights_taken(report)
    assert taken and int(taken.group(1)) >= 7 * 3 + 1 and "left as" not in taken.string


def test_every_weight_read_is_held_to_its_grid(converted, capsys):
    code, report = check(converted, capsys, "q8_0", "--weights")
    at, [found] = diagnosis_at_first_divergence(report)
    assert code == 1 and found["cause"] == "weight_rounding", found
    assert re.search(r"(\d+) weights that differ, each as far from the reference's as rounding to its grid",
                     found["message"]), found["message"]
    assert not [d for d in report["diagnoses"] if d["cause"] == "weight_mismatch"]


@pytest.fixture(scope="module")
def k_quantized(tmp_path_factory):
    """The tiny Llama with rows of 256 (K-quants' super-blocks), its F32 GGUF quantized to Q4_K_M by llama.cpp's
    own llama_model_quantize (Q4_K and Q6_K tensors: a scale and a minimum per 32, a scale per 16)."""
    import ctypes

    need("llama_cpp")
    import llama_cpp

    widths = dict(hidden_size=256, intermediate_size=512)
    directory = gguf_models.model_dir("llama", **widths)
    quantized = directory / "model-q4_k_m.gguf"
    if not quantized.is_file():
        params = llama_cpp.llama_model_quantize_default_params()
        params.ftype = llama_cpp.LLAMA_FTYPE_MOSTLY_Q4_K_M
        staging = quantized.with_name(f"model-q4_k_m.tmp{os.getpid()}.gguf")
        assert llama_cpp.llama_model_quantize(str(gguf_models.gguf("llama", "f32", **widths)).encode(),
                                              str(staging).encode(), ctypes.byref(params)) == 0
        staging.rename(quantized)
    factories = tmp_path_factory.mktemp("k_quantized") / "loaders.py"
    factories.write_text(FACTORIES.format(directory=str(directory)))
    return directory, factories


def test_a_k_quantized_file_loaded_as_floats_passes_with_its_weights_in_the_reference(k_quantized, capsys):
    code, report = check(k_quantized, capsys, "q4_k_m", "--weights")
    at, [found] = diagnosis_at_first_divergence(report)
    assert code == 1 and found["cause"] == "weight_rounding", found
    assert "each as far from the reference's as rounding to its grid makes it" in found["message"]
    code, report = check(k_quantized, capsys, "q4_k_m", "--quantized-reference")
    assert code == 0, report["first_divergence"]


def test_a_weight_on_the_grid_but_not_the_references_rounded_is_a_conversion_error(converted, capsys):
    code, report = check(converted, capsys, "q8_0_of_another_layer", "--weights")
    [found] = [d for d in report["diagnoses"] if d["cause"] == "weight_rounding"]
    assert code == 1 and "the candidate's layers.0.q.weight 8-bit levels" in found["message"], found
    assert "further from the reference's than rounding to it makes it" in found["message"]
    code, report = check(converted, capsys, "q8_0_of_another_layer", "--quantized-reference")
    at, [found] = diagnosis_at_first_divergence(report)
    assert code == 1 and at == "layers.0.q", report["first_divergence"]
    assert any("left as the reference's, 1" in note and "layers.0.q.weight" in note for note in report["notes"])


def test_a_weight_on_no_grid_after_weights_on_one_is_a_conversion_error(converted, capsys):
    code, report = check(converted, capsys, "q8_0_one_weight_left_unloaded", "--weights")
    [found] = [d for d in report["diagnoses"] if d["cause"] == "weight_rounding"]
    assert code == 1 and "the candidate's layers.1.mlp_out.weight lies on no grid, while the weights before it" \
        in found["message"], found
