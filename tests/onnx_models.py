"""ONNX models made as users make them: onnxruntime-genai's model builder and torch.onnx's exporter, and a built
model's graph changed the way a converter bug changes it (an attribute, a wire)."""

import contextlib
import io
import shutil
import subprocess
import sys
from pathlib import Path


def build_genai(model_dir: Path, out: Path, precision: str = "fp32", *extra: str) -> Path:
    """onnxruntime-genai's builder run on a transformers model directory (with its tokenizer), as its README says;
    `extra`: its --extra_options (accuracy_level=1)."""
    options = ["--extra_options", *extra] if extra else []
    result = subprocess.run([sys.executable, "-m", "onnxruntime_genai.models.builder", "-i", str(model_dir),
                             "-m", model_dir.name, "-o", str(out), "-p", precision, "-e", "cpu",
                             "-c", str(out.parent / f"{out.name}_cache"), *options],
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0 and (out / "model.onnx").is_file(), result.stdout[-2000:] + result.stderr[-2000:]
    return out


def export_torch(model_dir: Path, out: Path, attention: str = "sdpa") -> Path:
    """torch.onnx.export (its torch.export path) of the model's logits over input_ids of any length."""
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32, attn_implementation=attention).eval()

    class Logits(torch.nn.Module):
        def __init__(self, model):
            super().__init__()
            self.model = model

        def forward(self, input_ids):
            return self.model(input_ids=input_ids, use_cache=False).logits

    with contextlib.redirect_stdout(io.StringIO()):
        torch.onnx.export(Logits(model), (torch.tensor([[0, 17, 5, 40, 8, 9]]),), str(out), input_names=["input_ids"],
                          output_names=["logits"], dynamic_shapes={"input_ids": {1: "sequence"}}, dynamo=True)
    return out


def changed(built: Path, out: Path, change, initializer: str = "", rewrite=None) -> Path:
    """A copy of the genai folder `built` whose graph's nodes `change(node)` has edited, and whose `initializer`
    `rewrite(array)` has rewritten (weights kept beside it)."""
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(built / "model.onnx"))
    for node in model.graph.node:
        change(node)
    for tensor in model.graph.initializer:
        if tensor.name == initializer:
            tensor.CopyFrom(numpy_helper.from_array(rewrite(numpy_helper.to_array(tensor)), tensor.name))
    out.mkdir()
    for item in built.iterdir():
        if not item.name.startswith("model.onnx"):
            shutil.copy(item, out / item.name)
    onnx.save(model, str(out / "model.onnx"), save_as_external_data=True, location="model.onnx.data")
    return out


def set_attribute(op_type: str, name: str, value, where: str = ""):
    """A change for `changed`: attribute `name` of each `op_type` node whose name contains `where` set to `value`."""
    def change(node):
        if node.op_type == op_type and where in node.name:
            for attribute in node.attribute:
                if attribute.name == name:
                    if isinstance(value, float):
                        attribute.f = value
                    else:
                        attribute.i = value
    return change


def quantized(model: Path, out: Path, how: str, calibration_ids: int = 90) -> Path:
    """`model` (a genai folder or a .onnx file) quantized by onnxruntime's own tools, as their docs say:
    "dynamic" and "dynamic_per_channel" (`quantize_dynamic`, int8 weights, activations quantized per call),
    "static_qdq" (`quantize_static` in QDQ form, calibrated on random token ids below `calibration_ids`),
    "int4_qdq" (`MatMulNBitsQuantizer` in QDQ form: weight-only int4 in blocks of 32). A folder's other files
    are copied beside the quantized graph."""
    import numpy as np
    import onnx
    from onnxruntime.quantization import (CalibrationDataReader, QuantFormat, QuantType, quantize_dynamic,
                                          quantize_static)
    from onnxruntime.quantization.matmul_nbits_quantizer import DefaultWeightOnlyQuantConfig, MatMulNBitsQuantizer

    source, target = (model / "model.onnx", out / "model.onnx") if model.is_dir() else (model, out)
    if model.is_dir():
        out.mkdir()
        for item in model.iterdir():
            if not item.name.startswith("model.onnx"):
                shutil.copy(item, out / item.name)

    class Calibration(CalibrationDataReader):
        def __init__(self):
            rng = np.random.default_rng(0)
            self.feeds = iter([{"input_ids": rng.integers(0, calibration_ids, (1, 8))} for _ in range(4)])

        def get_next(self):
            return next(self.feeds, None)

    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        if how.startswith("dynamic"):
            quantize_dynamic(str(source), str(target), weight_type=QuantType.QInt8, per_channel=how.endswith("channel"))
        elif how == "static_qdq":
            quantize_static(str(source), str(target), Calibration(), quant_format=QuantFormat.QDQ, per_channel=True,
                            op_types_to_quantize=["MatMul", "Gather"], weight_type=QuantType.QInt8,
                            activation_type=QuantType.QUInt8)
        else:
            quantizer = MatMulNBitsQuantizer(onnx.load(str(source)), algo_config=DefaultWeightOnlyQuantConfig(
                block_size=32, is_symmetric=True, quant_format=QuantFormat.QDQ, op_types_to_quantize=("MatMul",)))
            quantizer.process()
            quantizer.model.save_model_to_file(str(target), use_external_data_format=False)
    return out
