"""OpenVINO (Intel's inference engine, its CPU plugin) as a candidate: a graph exported by torch.onnx, compiled by
OpenVINO and handed over as a function of token ids (examples/openvino_candidate.py), declaring the precision the
compiled model reports. On a CPU with bfloat16 units the plugin computes in bfloat16 by default, whatever the
file's float32: held to float32, such a correct build fails; declared, it passes at bfloat16's noise."""

import json

import pytest

import onnx_models
import tiny_models
from conftest import ROOT, need
from test_cli import parity

EXAMPLE = ROOT / "examples" / "openvino_candidate.py"
TOKENS = "0,17,5,40,8,9,31,22,64,3"
UNDECLARED = '''import os
import numpy as np
import openvino as ov


def plain(model_dir):       # the engine called as its docs show, no precision declared
    model = ov.Core().compile_model(os.environ["OV_MODEL"], "CPU", {"INFERENCE_PRECISION_HINT": "bf16"})
    return lambda input_ids: model(np.asarray(input_ids, dtype=np.int64))[0]
'''


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    need("openvino")
    need("onnxscript")
    directory = tmp_path_factory.mktemp("ov_llama")
    tiny_models.save("llama", directory)
    return directory, onnx_models.export_torch(directory, directory / "model.onnx")


def check(model_dir, spec, onnx_file, precision=None):
    environment = {"OV_MODEL": str(onnx_file), **({"OV_PRECISION": precision} if precision else {})}
    result = parity("check", model_dir, spec, "--tokens", TOKENS, "--json", "-", env=environment)
    assert result.stdout.startswith("{"), result.stderr[-2000:]
    return result, json.loads(result.stdout)


def engine_precision(onnx_file, hint=None) -> str:
    import openvino as ov

    model = ov.Core().compile_model(str(onnx_file), "CPU", {"INFERENCE_PRECISION_HINT": hint} if hint else {})
    return model.get_property("INFERENCE_PRECISION_HINT").get_type_name()


@pytest.mark.parametrize("precision", [None, "f32"])
def test_openvino_passes_at_the_precision_it_computes_in(exported, precision):
    model_dir, onnx_file = exported
    result, report = check(model_dir, f"{EXAMPLE}:compiled", onnx_file, precision)
    assert result.returncode == 0, json.dumps(report["first_divergence"])[:2000]
    expected = {"f32": "float32", "bf16": "bfloat16", "f16": "float16"}[engine_precision(onnx_file, precision)]
    assert report["candidate"]["dtype"] == expected and report["calibrated"]
    assert report["generation"]["verdict"] == "pass"


def test_undeclared_bfloat16_fails_float32_and_is_told_what_fits(exported, tmp_path):
    model_dir, onnx_file = exported
    if engine_precision(onnx_file, "bf16") != "bf16":
        pytest.skip("this CPU's OpenVINO plugin does not compute in bfloat16")
    factory = tmp_path / "undeclared.py"
    factory.write_text(UNDECLARED)
    result, report = check(model_dir, f"{factory}:plain", onnx_file)
    assert result.returncode == 1 and report["first_divergence"]["checkpoint"] == "logits"
    assert any("within 3x the noise that bfloat16" in note and 'parity_dtype = "bfloat16"' in note
               for note in report["notes"]), report["notes"]
