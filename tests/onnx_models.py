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
