"""Quantized PyTorch builds of a tiny Llama, made the ways users make them (torchao's `quantize_`, PyTorch's own
`torch.ao.quantization.quantize_dynamic`; code nobody here wrote), checked against the float model.

At first contact a torchao int8 build ended in a traceback (".numpy() is not supported for tensor subclasses"), and
its weights, read after the check, were called another model's. A quantized build's weights are now read as the
floats they stand for and held to the rounding their own grid gives: named `weight_rounding`, or a conversion error
when further off. `--quantized-reference` gives the reference those weights, so that what is checked is what the
build computes with them: a correct weight-only build passes, one that quantizes its activations as it runs is named
`activation_quantization`."""

import json
import re
from pathlib import Path

import pytest

pytest.importorskip("transformers")

import tiny_models  # noqa: E402
from conftest import TOKENS, need  # noqa: E402

LAYERS = tiny_models.config("llama").num_hidden_layers

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
FACTORIES = f'''import sys

import torch

sys.path.insert(0, {str(EXAMPLES)!r})
from quantized_builds import *   # the builds a user makes: examples/quantized_builds.py
from quantized_builds import loaded


def another_layers_q_quantized(path):   # a converter that read layer 1's q into layer 0's, then quantized
    from torchao.quantization import Int8WeightOnlyConfig, quantize_

    model = loaded(path)
    with torch.no_grad():
        model.model.layers[0].self_attn.q_proj.weight.copy_(model.model.layers[1].self_attn.q_proj.weight)
    quantize_(model, Int8WeightOnlyConfig())
    return model


def scales_of_another_row(path):        # a kernel that applies each row's scale to the next row
    model = torchao_int8(path)
    proj = model.model.layers[1].mlp.down_proj
    weight = proj.weight.dequantize()
    scales = weight.abs().amax(dim=1, keepdim=True)
    shifted = weight / scales * scales.roll(1, dims=0)
    proj.forward = lambda x: torch.nn.functional.linear(x, shifted)
    return model


def output_projection_alone(path):     # lm_head quantized, nothing else
    from torchao.quantization import Int8WeightOnlyConfig, quantize_

    model = loaded(path)
    quantize_(model, Int8WeightOnlyConfig(), filter_fn=lambda module, name: name == "lm_head")
    return model


def nf4_dequantized(path):               # transformers' model.dequantize(): plain float weights on NF4's code
    model = nf4(path)
    model.dequantize()
    return model.float()


def nf4_declared_bfloat16(path):       # its CPU kernel computes in bfloat16: the module says so
    model = nf4(path)
    model.parity_dtype = "bfloat16"
    return model


def quanto_float8(path):
    return quanto(path, weights="qfloat8")


class OwnRounding(torch.Tensor):       # a library's quantized weight whose grid parity cannot read
    def dequantize(self):
        return self.as_subclass(torch.Tensor)


def rounded_on_a_grid_of_its_own(path):
    model = loaded(path)
    with torch.no_grad():
        for layer in model.model.layers:
            for projection in (layer.self_attn.q_proj, layer.mlp.down_proj):
                rounded = (projection.weight * 64).round() / 64
                projection.weight = torch.nn.Parameter(rounded.as_subclass(OwnRounding), requires_grad=False)
    return model


def declared_otherwise(path):
    model = loaded(path)
    model.parity_dtype = "int4"
    return model


def unquantized(path):
    return loaded(path)
'''


@pytest.fixture(scope="module")
def llama(tmp_path_factory):
    need("torchao")
    directory = tiny_models.save("llama", tmp_path_factory.mktemp("llama"))
    factories = directory / "builds.py"
    factories.write_text(FACTORIES)
    return directory, factories


@pytest.fixture(scope="module")
def tied_llama(tmp_path_factory):
    """The tiny Llama with its output projection tied to the token table, as SmolLM2's is."""
    need("torchao")
    directory = tiny_models.save("llama", tmp_path_factory.mktemp("tied_llama"), tie_word_embeddings=True)
    factories = directory / "builds.py"
    factories.write_text(FACTORIES)
    return directory, factories


@pytest.fixture(scope="module")
def llama_in_blocks(tmp_path_factory):
    """The tiny Llama with widths bitsandbytes' 4-bit CPU kernel takes (multiples of its blocks of 64: with an MLP
    of 96, bitsandbytes 0.50.2's own forward fails under no_grad on a CPU with AVX512-BF16), two blocks to a row
    (the kernel's repacking transposes the blocks' scales: read as they lay, the weights came out scrambled)."""
    need("bitsandbytes")
    directory = tiny_models.save("llama", tmp_path_factory.mktemp("llama_in_blocks"), hidden_size=128,
                                 intermediate_size=256)
    factories = directory / "builds.py"
    factories.write_text(FACTORIES)
    return directory, factories


def check(llama, capsys, factory, *options):
    from parity.cli import main

    directory, factories = llama
    capsys.readouterr()
    code = main(["check", str(directory), f"{factories}:{factory}", "--tokens", ",".join(map(str, TOKENS)),
                 "--decode-steps", "0", "--json", "-", *options])
    captured = capsys.readouterr()
    return code, (json.loads(captured.out) if captured.out.startswith("{") else captured.err)


def weights_taken(report):
    """The note that says how many quantized weights --quantized-reference took, matched: group 1 the count."""
    [taken] = [re.search(r"the reference computed with the candidate's (\d+) quantized weights", note)
               for note in report["notes"] if "--quantized-reference" in note]
    return taken


def diagnosis_at_first_divergence(report):
    at = report["first_divergence"]["checkpoint"]
    return at, [d for d in report["diagnoses"] if d["checkpoint"] == at]


@pytest.mark.parametrize("factory, blocks", [("torchao_int8", "1x64"), ("torchao_int8_groups_of_32", "1x32")])
def test_a_torchao_int8_build_is_named_as_its_weights_rounding(llama, capsys, factory, blocks):
    code, report = check(llama, capsys, factory)
    at, [found] = diagnosis_at_first_divergence(report)
    assert code == 1 and at == "layers.0.q"
    assert found["cause"] == "weight_rounding", found
    assert f"int8 in blocks of {blocks} (torchao AffineQuantizedTensor)" in found["message"]
    assert "as far from the reference's as rounding to its grid makes it" in found["message"]
    assert "--quantized-reference" in found["message"]


def test_every_weight_read_with_weights_is_held_to_its_grid(llama, capsys):
    code, report = check(llama, capsys, "torchao_int8", "--weights")
    at, [found] = diagnosis_at_first_divergence(report)
    assert code == 1 and found["cause"] == "weight_rounding", found
    read = re.search(r"(\d+) quantized weights read, as far from the reference's as rounding to its grid makes each",
                     found["message"])
    assert read and int(read.group(1)) >= 7 * LAYERS, found["message"]   # q k v o gate up down in every layer
    assert not [d for d in report["diagnoses"] if d["cause"] == "weight_mismatch"]


def test_an_output_projection_quantized_alone_is_read_where_its_cause_names_the_op(llama, capsys):
    code, report = check(llama, capsys, "output_projection_alone")
    at, found = diagnosis_at_first_divergence(report)
    assert code == 1 and at == "logits", report["first_divergence"]
    causes = {d["cause"]: d["message"] for d in found}
    assert set(causes) == {"output_projection", "weight_rounding"}, causes
    assert "logits.weight int8" in causes["weight_rounding"] and "--weights" not in causes["output_projection"]


def test_a_weight_further_off_than_its_grid_is_a_conversion_error(llama, capsys):
    code, report = check(llama, capsys, "another_layers_q_quantized")
    at, [found] = diagnosis_at_first_divergence(report)
    assert code == 1 and at == "layers.0.q" and found["cause"] == "weight_rounding"
    assert "further from the reference's than rounding to its grid makes it" in found["message"]


@pytest.mark.parametrize("factory", ["torchao_int8", "torchao_int8_groups_of_32"])
def test_a_correct_weight_only_build_passes_with_its_weights_in_the_reference(llama, capsys, factory):
    code, report = check(llama, capsys, factory, "--quantized-reference")
    assert code == 0, report["first_divergence"]
    taken = weights_taken(report)
    assert taken and int(taken.group(1)) >= 7 * LAYERS and "left as" not in taken.string


def test_a_tied_output_projection_quantized_apart_from_the_table_passes(tied_llama, capsys):
    # quantize_ gives lm_head a quantized weight of its own and leaves the token table in float: the reference's
    # lm_head, tied to its table, is untied to take it (taken in place, the table had changed: FAIL at embed)
    code, report = check(tied_llama, capsys, "torchao_int8", "--quantized-reference")
    assert code == 0, report["first_divergence"]


def test_a_kernel_bug_behind_the_quantization_fails_with_its_weights_in_the_reference(llama, capsys):
    code, report = check(llama, capsys, "scales_of_another_row")
    assert code == 1 and report["first_divergence"]["checkpoint"] == "layers.0.q"   # hidden by the rounding
    code, report = check(llama, capsys, "scales_of_another_row", "--quantized-reference")
    assert code == 1 and report["first_divergence"]["checkpoint"] == "layers.1.mlp_out", report["first_divergence"]


def test_a_conversion_error_is_left_as_the_references_and_still_fails(llama, capsys):
    code, report = check(llama, capsys, "another_layers_q_quantized", "--quantized-reference")
    at, [found] = diagnosis_at_first_divergence(report)
    assert code == 1 and at == "layers.0.q" and found["cause"] == "weight_rounding"
    assert any("left as the reference's, 1" in note and "layers.0.q.weight" in note for note in report["notes"])


@pytest.mark.parametrize("factory, inputs", [
    ("torchao_int8_activations", "_int8_symm_per_token_reduced_range_quant"),
    ("torch_dynamic", "torch.ao's dynamic quantization, a scale per call")])
def test_a_build_that_quantizes_its_activations_is_named_so(llama, capsys, factory, inputs):
    code, report = check(llama, capsys, factory, "--quantized-reference")
    at, [found] = diagnosis_at_first_divergence(report)
    assert code == 1 and at == "layers.0.q"
    assert found["cause"] == "activation_quantization" and inputs in found["message"], found


def test_quantized_reference_refuses_what_it_cannot_use(llama, capsys):
    code, message = check(llama, capsys, "unquantized", "--quantized-reference")
    assert code == 2 and "holds no quantized weight parity can read" in message and "Traceback" not in message


@pytest.mark.parametrize("factory, stored", [("llm_int8", "int8, a scale per row (bitsandbytes Int8Params)"),
                                             ("nf4", "nf4 in blocks of 64 (bitsandbytes Params4bit)")])
def test_a_bitsandbytes_build_is_named_as_its_weights_rounding(llama_in_blocks, capsys, factory, stored):
    # read after its forwards, which move LLM.int8()'s row scales to the module and repack NF4 for the CPU kernel
    code, report = check(llama_in_blocks, capsys, factory)
    at, [found] = diagnosis_at_first_divergence(report)
    assert code == 1 and at == "layers.0.q" and found["cause"] == "weight_rounding", found
    assert stored in found["message"] and "as far from the reference's as rounding to its grid" in found["message"]


def test_llm_int8_with_its_weights_in_the_reference_is_its_activations_rounding(llama_in_blocks, capsys):
    code, report = check(llama_in_blocks, capsys, "llm_int8", "--quantized-reference")
    at, [found] = diagnosis_at_first_divergence(report)
    assert code == 1 and at == "layers.0.q" and found["cause"] == "activation_quantization", found
    assert "bitsandbytes LLM.int8()" in found["message"]


def test_nf4_with_its_weights_in_the_reference_is_checked_at_the_precision_its_kernel_computes_in(llama_in_blocks, capsys):
    from bitsandbytes.functional import has_avx512bf16

    code, report = check(llama_in_blocks, capsys, "nf4", "--quantized-reference")
    if not has_avx512bf16():      # its matmul in float32: the computation is the reference's
        assert code == 0, report["first_divergence"]
        return
    # on a CPU with AVX512-BF16 its kernel computes in bfloat16 while its weights say float32
    at, [found] = diagnosis_at_first_divergence(report)
    assert code == 1 and at == "layers.0.q" and found["cause"] == "declared_precision", found
    assert "bfloat16" in found["message"] and "`parity_dtype`" in found["message"]
    code, report = check(llama_in_blocks, capsys, "nf4_declared_bfloat16", "--quantized-reference")
    assert code == 0, report["first_divergence"]
    assert "bfloat16" in report["checkpoints"][0]["tolerance"]["basis"]


def test_a_precision_a_module_cannot_compute_in_is_refused(llama, capsys):
    code, message = check(llama, capsys, "declared_otherwise")
    assert code == 2 and "parity_dtype is 'int4'" in message and "Traceback" not in message


def test_quantized_reference_refuses_a_candidate_that_gives_no_weights(llama, capsys, tmp_path):
    from parity.cli import main

    directory, _ = llama
    trace = tmp_path / "port.safetensors"
    assert main(["capture", str(directory), "--tokens", ",".join(map(str, TOKENS)), "-o", str(trace)]) == 0
    capsys.readouterr()
    code = main(["check", str(directory), str(trace), "--quantized-reference"])
    message = capsys.readouterr().err
    assert code == 2 and "--quantized-reference reads the candidate's weights" in message, message


def test_decoding_a_build_that_quantizes_per_call_is_named_at_the_first_op_that_parts(llama, capsys):
    """torch.ao's dynamic Linear sets one scale over each call's tokens: a decoding step rounds its input on the
    grid its own tokens set, not the full pass's. The step parts first at such an op, named so."""
    code, report = check(llama, capsys, "torch_dynamic", "--quantized-reference", "--decode-steps", "4")
    decode = report["decode"]
    assert code == 1 and decode["first_checkpoint"] is not None
    found = [d for d in report["diagnoses"] if d["cause"] == "decode_quantization"]
    assert found and found[0]["checkpoint"] == decode["first_checkpoint"], report["diagnoses"]
    assert "a scale per call" in found[0]["message"]
    assert not any("no known cause fits" in note for note in report["notes"])


# optimum-quanto (its quantize and freeze, transformers' QuantoConfig): at first contact its weights were read with
# no grid ("its grid cannot be read"), so --quantized-reference took none of them; a module not frozen yet, which
# keeps its float weight and quantizes it at each call, had its float weight read: "the weight ... is the same: the
# error is made by the op", no known cause, and --quantized-reference refused it.
QUANTO = [("quanto_int8", "qint8, a scale per row (optimum WeightQBytesTensor)"),
          ("quanto_int8_not_frozen", "qint8, a scale per row (optimum WeightQBytesTensor)"),
          ("quanto_int4", "qint4, a scale per row (optimum WeightQBitsTensor)"),
          ("quanto_float8", "qfloat8_e4m3fn, a scale per row (optimum WeightQBytesTensor)"),
          ("quanto_config", "qint8, a scale per row (optimum WeightQBytesTensor)")]


@pytest.mark.parametrize("factory, stored", QUANTO)
def test_an_optimum_quanto_build_is_named_as_its_weights_rounding(llama, capsys, factory, stored):
    need("optimum.quanto")
    code, report = check(llama, capsys, factory)
    at, [found] = diagnosis_at_first_divergence(report)
    assert code == 1 and at == "layers.0.q" and found["cause"] == "weight_rounding", found
    assert stored in found["message"] and "as far from the reference's as rounding to its grid" in found["message"]


@pytest.mark.parametrize("factory", [factory for factory, _ in QUANTO])
def test_a_correct_optimum_quanto_build_passes_with_its_weights_in_the_reference(llama, capsys, factory):
    need("optimum.quanto")
    code, report = check(llama, capsys, factory, "--quantized-reference")
    assert code == 0, report["first_divergence"]
    taken = weights_taken(report)
    assert taken and int(taken.group(1)) >= 7 * LAYERS and "left as" not in taken.string


def test_optimum_quantos_activation_quantization_is_named_with_its_fixed_scale(llama, capsys):
    need("optimum.quanto")
    code, report = check(llama, capsys, "quanto_int8_activations", "--quantized-reference")
    at, [found] = diagnosis_at_first_divergence(report)
    assert code == 1 and at == "layers.0.q" and found["cause"] == "activation_quantization", found
    assert "quantized to qint8 with a fixed, calibrated scale, and its output too" in found["message"]


def test_quantized_reference_refuses_weights_on_no_grid_it_can_read(llama, capsys):
    # taking none and saying "computed with the candidate's 0 quantized weights" left the check to fail at every
    # weight's rounding as if the option had run
    code, message = check(llama, capsys, "rounded_on_a_grid_of_its_own", "--quantized-reference")
    assert code == 2 and "none of the candidate's" in message and "on a grid parity can read" in message, message
    assert "Traceback" not in message


# HQQ (its AutoHQQHFModel.quantize_model; transformers 5.24's HqqConfig is "not available yet"): its HQQLinear keeps
# no weight parameter (its packed W_q, uint8, and its groups' scales and zero points), so at first contact nothing
# of it could be read: "no known cause ... its weights or their conversion", and --quantized-reference took none.
@pytest.mark.parametrize("factory, stored", [("hqq_4bit", "4-bit in groups of 64 (hqq HQQLinear)"),
                                             ("hqq_4bit_axis_0", "4-bit in groups of 64 (hqq HQQLinear)"),
                                             ("hqq_8bit", "8-bit in groups of 64 (hqq HQQLinear)")])
def test_an_hqq_build_is_named_as_its_weights_rounding_and_passes_with_them_in_the_reference(llama, capsys, factory,
                                                                                             stored):
    need("hqq")
    code, report = check(llama, capsys, factory)
    at, [found] = diagnosis_at_first_divergence(report)
    assert code == 1 and at == "layers.0.q" and found["cause"] == "weight_rounding", found
    assert stored in found["message"] and "as far from the reference's as rounding to its grid" in found["message"]
    code, report = check(llama, capsys, factory, "--quantized-reference")
    assert code == 0, report["first_divergence"]
    taken = weights_taken(report)
    assert taken and int(taken.group(1)) == 7 * LAYERS and "left as" not in taken.string   # not its lm_head


def test_an_nf4_build_dequantized_by_transformers_is_held_to_its_codebook(llama_in_blocks, capsys):
    """transformers' `model.dequantize()` of a bitsandbytes NF4 build leaves plain float weights, each NF4's level
    times its block's absmax: "not the reference's ... converted them wrongly" at first contact; now the
    codebook is read from the values, and with the weights in the reference it passes."""
    code, report = check(llama_in_blocks, capsys, "nf4_dequantized")
    at, [found] = diagnosis_at_first_divergence(report)
    assert code == 1 and at == "layers.0.q" and found["cause"] == "weight_rounding", found
    assert "a codebook of 16 levels times each block of 64's largest magnitude" in found["message"]
    code, report = check(llama_in_blocks, capsys, "nf4_dequantized", "--quantized-reference")
    assert code == 0, report["first_divergence"]
