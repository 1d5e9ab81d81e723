"""ONNX models quantized by onnxruntime's own tools (onnxruntime.quantization: `quantize_dynamic`,
`quantize_static` in QDQ form, `MatMulNBitsQuantizer` in QDQ form), as users quantize a model they built or
exported; code nobody here wrote.

The quantizer inserts nodes that round activations and dequantize weights, reorders the graph and, on a
torch.onnx export, drops the metadata that names a replaced product's module. Each checkpoint is still found
where the graph keeps its module's name, each weight is read as the floats it stands for with its grid's
rounding, and the difference is named as the weights' rounding, or with `--quantized-reference` as the rounding
of the activations onnxruntime quantizes as it runs (decoding included)."""

import json

import pytest

import onnx_models
import tiny_models
from conftest import need
import test_onnx_candidates
from test_onnx_candidates import check, reasons, statuses

pytest.importorskip("transformers")

# The tiny Llama and its onnxruntime-genai float32 build, as the candidates' tests make them.
llama, genai = test_onnx_candidates.llama, test_onnx_candidates.genai


@pytest.fixture(scope="module")
def dynamic(genai, tmp_path_factory):
    return onnx_models.quantized(genai, tmp_path_factory.mktemp("dynamic") / "int8", "dynamic")


def diagnosis_at(report, checkpoint: str) -> dict:
    found = [d for d in report["diagnoses"] if d["checkpoint"] == checkpoint]
    assert found, json.dumps(report["diagnoses"])[:2000]
    return found[0]


def test_a_dynamically_quantized_build_is_compared_where_the_float_build_is(llama, dynamic):
    """Its DynamicQuantizeLinear nodes (named after the norm's output, so scoped to the norm) and MatMulInteger
    products are looked through: the same 41 checkpoints as the float build's are compared. Its token table
    (uint8 per tensor) is the first difference, as far from the reference's as its grid rounds."""
    result, report = check(llama, dynamic)
    status = statuses(report)
    assert result.returncode == 1 and len([s for s in status.values() if s != "not_comparable"]) == 41
    assert all(status[f"layers.{i}.{kind}"] != "not_comparable" for i in range(3)
               for kind in ("attn_norm", "q", "k", "v", "attn_ctx", "mlp_norm", "mlp_gate", "mlp_act", "mlp_out"))
    assert status["logits"] != "not_comparable"
    found = diagnosis_at(report, "embed")
    assert report["first_divergence"]["checkpoint"] == "embed" and found["cause"] == "weight_rounding", found
    assert "uint8 per tensor (DequantizeLinear)" in found["message"]
    assert "as far from the reference's as rounding to its grid" in found["message"]
    # its cache after the prefill differs from the reference's as its forward pass does: its values are held to
    # its own pass's (read, and matching); its keys, rotated inside GroupQueryAttention, are not recorded to be
    # held to, so they are not checked, and said so (they were "the keys of layer 0, head 0 differ")
    cache = report["decode"]["cache"]
    assert cache["passed"] and ["values", 0] in cache["inherited"] and ["keys", 0] in cache["unjudged"], cache
    assert any(item["check"] == "kv_cache" and "keys of layers 0-2" in item["reason"]
               for item in report["not_checked"]), report["not_checked"]


def test_its_weights_are_read_with_their_grids(llama, tmp_path, genai):
    per_channel = onnx_models.quantized(genai, tmp_path / "per_channel", "dynamic_per_channel")
    result, report = check(llama, per_channel, "--weights")
    weights = {name: s for name, s in statuses(report).items() if name.endswith(".weight")}
    assert len(weights) == 3 * 7 + 2        # the fused q|k|v's rows split as the float build's
    found = diagnosis_at(report, "embed")
    assert found["cause"] == "weight_rounding" and "23 quantized weights read" in found["message"], found
    assert "int8 per output channel (onnxruntime MatMulInteger)" in found["message"]


def test_with_its_weights_in_the_reference_it_is_named_as_quantizing_its_activations(llama, dynamic):
    """The reference computes with its int8 weights; what is left is each call's quantization of its inputs
    (uint8, one scale a call): named at the forward pass and, where decoding parts from the full pass, at the
    step's first checkpoint, a step's grid set by its own token."""
    result, report = check(llama, dynamic, "--quantized-reference")
    found = diagnosis_at(report, "layers.0.q")
    assert result.returncode == 1 and report["first_divergence"]["checkpoint"] == "layers.0.q"
    assert found["cause"] == "activation_quantization" and "DynamicQuantizeLinear" in found["message"], found
    decode = report["decode"]
    assert not decode["passed"] and decode["first_checkpoint"] == "layers.0.q"
    at_step = [d for d in report["diagnoses"] if d["cause"] == "decode_quantization"]
    assert at_step and "the grid its own tokens set" in at_step[0]["message"]
    assert not any("no known cause fits" in note for note in report["notes"])


def test_an_int4_qdq_build_fused_by_onnxruntime_is_named_as_its_kernel_computes(llama, genai, tmp_path):
    """MatMulNBitsQuantizer's QDQ form stores int4 weights in blocks of 32 beside a DequantizeLinear; onnxruntime
    fuses each with its MatMul into MatMulNBits, whose CPU kernel quantizes its input to int8 per block
    (accuracy_level 4 by default). Not in the file, so said where the weights are read."""
    built = onnx_models.quantized(genai, tmp_path / "int4", "int4_qdq")
    result, report = check(llama, built)
    found = diagnosis_at(report, "layers.0.q")
    assert found["cause"] == "weight_rounding" and "int4 in blocks of 32 along axis 0 (DequantizeLinear)" in \
        found["message"], found
    result, report = check(llama, built, "--quantized-reference")
    found = diagnosis_at(report, "layers.0.q")
    assert found["cause"] == "activation_quantization" and "MatMulNBits" in found["message"], found
    decode = report["decode"]            # per block, not per call: its steps are its full pass's
    assert decode["first_step"] is None and max(decode["rel_l2"]) < 1e-5, decode


def test_a_scale_written_wrong_is_not_the_grids_rounding(llama, genai, tmp_path):
    built = onnx_models.quantized(genai, tmp_path / "int4", "int4_qdq")
    name = "model.layers.1.mlp.down_proj.MatMul.weight_DQ_scales"
    wrong = onnx_models.changed(built, tmp_path / "wrong", lambda node: None, name, lambda scales: scales * 1.5)
    result, report = check(llama, wrong, "--weights")
    assert report["summary"]["failed"] and statuses(report)["layers.1.mlp_out.weight"] == "fail"
    found = [d for d in report["diagnoses"] if d["cause"] == "weight_rounding"]
    assert found and "layers.1.mlp_out.weight" in found[0]["message"]
    assert "further from the reference's than rounding to its grid makes it" in found[0]["message"], found


@pytest.fixture(scope="module")
def qwen3(tmp_path_factory):
    need("onnxscript")
    directory = tmp_path_factory.mktemp("onnx_quantized_qwen3")
    tiny_models.save("qwen3", directory)
    return directory, onnx_models.export_torch(directory, directory.parent / "qwen3.onnx")


def test_a_static_qdq_export_is_compared_at_every_checkpoint(qwen3, tmp_path):
    """quantize_static's QDQ form keeps the exporter's nodes and adds a QuantizeLinear/DequantizeLinear pair on
    each activation a product reads (the MLP's outputs too): every checkpoint is found past them."""
    directory, exported = qwen3
    built = onnx_models.quantized(exported, tmp_path / "static.onnx", "static_qdq")
    result, report = check(directory, built)
    assert not reasons(report), reasons(report)
    found = diagnosis_at(report, "embed")
    assert found["cause"] == "weight_rounding", found
    result, report = check(directory, built, "--quantized-reference")
    found = diagnosis_at(report, report["first_divergence"]["checkpoint"])
    assert found["cause"] == "activation_quantization" and "fixed, calibrated scale (QuantizeLinear)" in \
        found["message"], found


def test_a_dynamically_quantized_export_says_which_modules_it_lost(qwen3, tmp_path):
    """quantize_dynamic replaces each MatMul of a torch.onnx export by nodes without the exporter's metadata: the
    linear layers' outputs are not comparable, and why; the rest is compared."""
    directory, exported = qwen3
    built = onnx_models.quantized(exported, tmp_path / "dynamic.onnx", "dynamic")
    result, report = check(directory, built)
    why = reasons(report)
    assert "carry no module scope" in why["layers.0.q"] and "onnxruntime's" in why["layers.0.q"]
    assert statuses(report)["layers.0.q_norm"] != "not_comparable" and "embed" not in why
    assert report["first_divergence"]["checkpoint"] == "embed"

