"""OpenVINO (Intel's inference engine) as a parity candidate: its CPU plugin's logits at every position, handed
over as a function of token ids, declaring the precision the engine says it computes in.

OpenVINO reads an ONNX file or its own IR (.xml) and compiles it for the CPU. On a CPU with bfloat16 units
(AMX, AVX512-BF16) its default inference precision is bfloat16, not the file's float32: the function
declares the precision the compiled model reports (`INFERENCE_PRECISION_HINT`), so parity calibrates at it.

    OV_MODEL=model.onnx parity check MODEL_DIR examples/openvino_candidate.py:compiled
    parity check MODEL_DIR examples/openvino_candidate.py:exported     # MODEL_DIR exported to ONNX here

`OV_PRECISION` (f32, bf16, f16) sets the inference precision instead of the plugin's default. The graph takes
input_ids of any length and returns the logits (torch.onnx.export of a module returning `.logits`, as
`exported` makes it); it shows no intermediate tensor, so its layers are "not checked", with the reason.
"""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np

PRECISIONS = {"f32": "float32", "bf16": "bfloat16", "f16": "float16"}   # OpenVINO's element types, parity's names


def compiled(model_dir):
    """The graph in $OV_MODEL (.onnx or .xml), compiled for the CPU, as a function of token ids."""
    path = os.environ.get("OV_MODEL")
    if not path:
        raise SystemExit("set OV_MODEL to an .onnx file or OpenVINO IR (.xml) that maps input_ids to logits")
    return _logits_of(path)


def exported(model_dir):
    """MODEL_DIR exported by torch.onnx (its torch.export path) into a temporary directory, removed at exit.
    (OpenVINO's own converter from PyTorch, `openvino.convert_model`, fails on transformers 5's models: "None
    constant cannot be converted to OpenVINO opset".)"""
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()

    class Logits(torch.nn.Module):
        def __init__(self, model):
            super().__init__()
            self.model = model

        def forward(self, input_ids):
            return self.model(input_ids=input_ids, use_cache=False).logits

    output = Path(tempfile.mkdtemp(prefix="parity-openvino-"))
    atexit.register(shutil.rmtree, output, ignore_errors=True)
    torch.onnx.export(Logits(model), (torch.tensor([[1, 2, 3, 4]]),), str(output / "model.onnx"),
                      input_names=["input_ids"], output_names=["logits"],
                      dynamic_shapes={"input_ids": {1: "sequence"}}, dynamo=True)
    return _logits_of(str(output / "model.onnx"))


def _logits_of(path: str):
    import openvino as ov

    core = ov.Core()
    hint = os.environ.get("OV_PRECISION")
    model = core.compile_model(core.read_model(path), "CPU", {"INFERENCE_PRECISION_HINT": hint} if hint else {})

    def forward(input_ids):                       # input_ids: (1, T) int64
        return model(np.asarray(input_ids, dtype=np.int64))[0]   # (1, T, V) float32
    computes_in = model.get_property("INFERENCE_PRECISION_HINT").get_type_name()
    forward.parity_dtype = PRECISIONS[computes_in]   # what the plugin computes in, whatever the file's types
    return forward
