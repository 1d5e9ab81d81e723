"""transformers.js (ONNX Runtime under Node.js) as a candidate: a JS program runs the model over token ids and
writes a parity trace itself (examples/js/transformers_js_trace.cjs, with examples/js/parity_trace.cjs's writer):
the logits, and each layer's keys after RoPE and values as its KV cache holds them.

The model is onnxruntime-genai's build of a tiny Llama, laid out as transformers.js reads a model: one file
(transformers.js names external data `model.onnx_data`, the builder `model.onnx.data`), and the cache's head
size written as a number (transformers.js reads the empty cache's shape from the graph, where the builder
names it `kv_cache_dim`)."""

import json
import shutil

import pytest

import onnx_models
import tiny_models
from conftest import ROOT, need
from node_packages import node_modules, run_node
from test_cli import parity

SCRIPT = ROOT / "examples" / "js" / "transformers_js_trace.cjs"
TOKENS = "0,17,5,40,8,9,31,22,64,3"


@pytest.fixture(scope="module")
def modules():
    return node_modules("@huggingface/transformers")


@pytest.fixture(scope="module")
def llama(tmp_path_factory):
    need("onnxruntime_genai")
    directory = tmp_path_factory.mktemp("js_llama")
    tiny_models.save("llama", directory, intermediate_size=128)
    tiny_models.save_tokenizer(directory)
    return directory


@pytest.fixture(scope="module")
def genai(llama, tmp_path_factory):
    return onnx_models.build_genai(llama, tmp_path_factory.mktemp("js_genai") / "fp32")


def for_transformers_js(model_dir, built, out):
    """The genai build `built` laid out as transformers.js loads a model: config, tokenizer, onnx/model.onnx."""
    import onnx

    (out / "onnx").mkdir(parents=True)
    for name in ("config.json", "tokenizer.json", "tokenizer_config.json"):
        shutil.copy(model_dir / name, out / name)
    head_dim = json.loads((model_dir / "config.json").read_text())["head_dim"]
    graph = onnx.load(str(built / "model.onnx"))
    for value in (*graph.graph.input, *graph.graph.output):
        dims = value.type.tensor_type.shape.dim
        if len(dims) == 4 and dims[3].dim_param == "kv_cache_dim":
            dims[3].dim_value = head_dim
    onnx.save(graph, str(out / "onnx" / "model.onnx"))
    return out


def traced(modules, model_dir, built, tmp_path):
    trace = tmp_path / "transformers_js.safetensors"
    run_node(SCRIPT, for_transformers_js(model_dir, built, tmp_path / "model"), TOKENS, trace, modules=modules)
    result = parity("check", model_dir, trace, "--tokens", TOKENS, "--json", "-")
    assert result.stdout.startswith("{"), result.stderr[-2000:]
    report = json.loads(result.stdout)
    return result, report, {entry["name"]: entry["status"] for entry in report["checkpoints"]}


def test_transformers_js_passes_at_its_logits_and_every_layers_cache(modules, llama, genai, tmp_path):
    result, report, status = traced(modules, llama, genai, tmp_path)
    assert result.returncode == 0, json.dumps(report["first_divergence"])[:2000]
    assert report["candidate"]["producer"].startswith("transformers.js 4.3.2 (onnxruntime-node")
    assert {name: status[name] for name in status if status[name] != "absent"} == {
        **{f"layers.{i}.{kind}": "pass" for i in range(3) for kind in ("k_rope", "v")}, "logits": "pass"}


def test_a_layer_whose_keys_are_not_rotated_is_found_in_its_cache(modules, llama, genai, tmp_path):
    unrotated = onnx_models.changed(genai, tmp_path / "changed",
                                    onnx_models.set_attribute("GroupQueryAttention", "do_rotary", 0, "layers.1/"))
    result, report, status = traced(modules, llama, unrotated, tmp_path)
    assert result.returncode == 1
    assert report["first_divergence"]["checkpoint"] == "layers.1.k_rope"
    assert status["layers.0.k_rope"] == status["layers.0.v"] == status["layers.1.v"] == "pass"
    causes = {(d["cause"], d["checkpoint"]) for d in report["diagnoses"]}
    assert causes == {("op_skipped", "layers.1.k_rope")}, causes   # no op said left out where nothing is recorded


def test_a_q8_build_is_checked_with_its_precision_said_unknown(modules, llama, genai, tmp_path):
    """transformers.js's "q8" (onnxruntime's quantize_dynamic, as its conversion script makes it): the trace says
    dtype "q8", which is no float precision to run the reference in; the check runs and says so."""
    layout = for_transformers_js(llama, genai, tmp_path / "model")
    onnx_models.quantized(layout / "onnx" / "model.onnx", layout / "onnx" / "model_quantized.onnx", "dynamic")
    trace = tmp_path / "q8.safetensors"
    run_node(SCRIPT, layout, TOKENS, trace, "q8", modules=modules)
    result = parity("check", llama, trace, "--tokens", TOKENS, "--json", "-")
    assert result.stdout.startswith("{"), result.stderr[-2000:]
    report = json.loads(result.stdout)
    [calibration] = [entry["reason"] for entry in report["not_checked"] if entry["check"] == "calibration"]
    assert "its metadata's dtype is 'q8', not a floating-point precision" in calibration
    # int8 weights and activations part from float32's tolerances at the first projection the cache shows
    assert result.returncode == 1 and report["summary"]["failed"] == 7
    assert report["first_divergence"]["checkpoint"] == "layers.0.v"


def test_an_fp16_build_is_written_as_float16_and_passes_at_its_noise(modules, llama, tmp_path):
    """transformers.js's "fp16" (onnx/model_fp16.onnx): its float16 logits and cache come as their bits in a
    Uint16Array and are written as F16, so the check is calibrated at float16."""
    layout = for_transformers_js(llama, onnx_models.build_genai(llama, tmp_path / "fp16", "fp16"), tmp_path / "model")
    (layout / "onnx" / "model.onnx").rename(layout / "onnx" / "model_fp16.onnx")
    trace = tmp_path / "fp16.safetensors"
    run_node(SCRIPT, layout, TOKENS, trace, "fp16", modules=modules)
    result = parity("check", llama, trace, "--tokens", TOKENS, "--json", "-")
    report = json.loads(result.stdout)
    assert result.returncode == 0 and report["summary"]["passed"] == 7, json.dumps(report["first_divergence"])[:2000]
    logits = next(entry for entry in report["checkpoints"] if entry["name"] == "logits")
    assert report["candidate"]["dtype"] == "float16" and report["calibrated"]
    assert logits["tolerance"]["basis"].startswith("calibrated: 3x the noise of float16")
