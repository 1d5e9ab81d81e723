"""Which specs are ONNX candidates: a .onnx file, an onnxruntime-genai folder, an export folder; not a model
directory that holds an ONNX file beside its weights."""

import json

from parity.capture.candidate import parse_candidate
from parity.capture.onnx.candidate import onnx_file


def test_onnx_files_and_folders_are_onnx_candidates(tmp_path):
    genai = tmp_path / "genai"
    genai.mkdir()
    (genai / "genai_config.json").write_text(json.dumps({"model": {"decoder": {"filename": "decoder.onnx"}}}))
    export = tmp_path / "export"          # optimum's: config.json and model.onnx, no transformers weights
    export.mkdir()
    (export / "config.json").write_text("{}")
    (export / "model.onnx").write_bytes(b"")
    model = tmp_path / "model"            # a model directory that also holds an ONNX file is the model
    model.mkdir()
    for name in ("config.json", "model.safetensors", "model.onnx"):
        (model / name).write_bytes(b"{}")
    assert onnx_file(genai) == genai / "decoder.onnx" and onnx_file(export) == export / "model.onnx"
    assert parse_candidate(str(tmp_path / "absent.onnx")).backend.backend == "onnx"
    assert parse_candidate(str(genai)).backend.backend == parse_candidate(str(export)).backend.backend == "onnx"
    assert parse_candidate(str(model)).backend.backend == "hf"
