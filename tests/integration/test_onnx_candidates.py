"""ONNX candidates: models made by onnxruntime-genai's builder (0.18: fused q|k|v, GroupQueryAttention rotating
inside, norms that add the residual) and by torch.onnx's exporter, run in onnxruntime; code nobody here wrote.

Correct builds pass, each checkpoint the graph does not hold reported not comparable with its reason; a graph
changed as a converter bug changes it fails where the change is, named. The builder itself has a bug parity
finds: it takes any linear layer with as many outputs as the vocabulary for the LM head, so a model whose MLP is
as wide as its vocabulary gets logits made from layer 0's norm."""

import json

import pytest

import onnx_models
import tiny_models
from conftest import need
from test_cli import assert_unusable, parity

pytest.importorskip("transformers")

TOKENS = "0,17,5,40,8,9,31,22,64,3"


def check(model, candidate, *options):
    result = parity("check", model, candidate, "--tokens", TOKENS, "--json", "-", *options)
    assert result.stdout.startswith("{"), result.stdout[-2000:] + result.stderr[-2000:]
    return result, json.loads(result.stdout)


def statuses(report) -> dict[str, str]:
    return {entry["name"]: entry["status"] for entry in report["checkpoints"]}


def reasons(report) -> dict[str, str]:
    return {entry["name"]: entry.get("reason") for entry in report["checkpoints"] if entry["status"] == "not_comparable"}


@pytest.fixture(scope="module")
def llama(tmp_path_factory):
    need("onnxruntime_genai")
    directory = tmp_path_factory.mktemp("onnx_llama")
    tiny_models.save("llama", directory, intermediate_size=128)
    tiny_models.save_tokenizer(directory)
    return directory


@pytest.fixture(scope="module")
def genai(llama, tmp_path_factory):
    return onnx_models.build_genai(llama, tmp_path_factory.mktemp("genai") / "fp32")


def test_a_genai_build_passes_with_what_its_fused_ops_hide_not_comparable(llama, genai):
    result, report = check(llama, genai)
    assert result.returncode == 0, json.dumps(report["first_divergence"])[:2000]
    status, why = statuses(report), reasons(report)
    assert report["summary"]["passed"] == 41 and report["summary"]["failed"] == 0
    assert all(status[f"layers.{i}.{kind}"] == "pass" for i in range(3)
               for kind in ("q", "k", "v", "attn_ctx", "resid_mid", "mlp_norm", "mlp_act", "mlp_out"))
    assert status["layers.1.out"] == "pass" and status["embed"] == status["final_norm"] == status["logits"] == "pass"
    assert "GroupQueryAttention" in why["layers.0.q_rope"] and "GroupQueryAttention" in why["layers.2.attn_probs"]
    assert "fourth output" in why["layers.2.out"]
    assert not [d for d in report["diagnoses"] if d["cause"] == "structure"]


def test_a_float16_genai_build_passes_at_float16(llama, genai, tmp_path):
    built = onnx_models.build_genai(llama, tmp_path / "fp16", "fp16")
    result, report = check(llama, built)
    assert result.returncode == 0, json.dumps(report["first_divergence"])[:2000]
    assert report["summary"]["passed"] == 41
    assert "float16" in report["checkpoints"][0]["tolerance"]["basis"]


@pytest.mark.parametrize("change, first, cause", [
    (onnx_models.set_attribute("SkipSimplifiedLayerNormalization", "epsilon", 1e-2, "layers.1/post_attention"),
     "layers.1.mlp_norm", "norm_epsilon"),
    (onnx_models.set_attribute("GroupQueryAttention", "do_rotary", 0), "layers.0.attn_ctx", "op_skipped"),
    (onnx_models.set_attribute("GroupQueryAttention", "scale", 0.275, "layers.1/"), "layers.1.attn_ctx",
     "attention_scale"),
], ids=["norm_epsilon", "no_rotary", "attention_scale"])
def test_a_changed_graph_fails_where_it_was_changed_and_is_named(llama, genai, tmp_path, change, first, cause):
    result, report = check(llama, onnx_models.changed(genai, tmp_path / "changed", change))
    assert result.returncode == 1
    assert report["first_divergence"]["checkpoint"] == first
    assert cause in [d["cause"] for d in report["diagnoses"] if d["checkpoint"] == first]


def test_the_builders_lm_head_taken_from_an_mlp_as_wide_as_the_vocabulary_fails_at_logits(tmp_path):
    need("onnxruntime_genai")
    directory = tmp_path / "llama96"
    tiny_models.save("llama", directory, intermediate_size=tiny_models.VOCAB)
    tiny_models.save_tokenizer(directory)
    result, report = check(directory, onnx_models.build_genai(directory, tmp_path / "built"))
    assert result.returncode == 1
    assert report["first_divergence"]["checkpoint"] == "logits" and report["summary"]["failed"] == 1
    assert "output_projection" in [d["cause"] for d in report["diagnoses"] if d["checkpoint"] == "logits"]


@pytest.mark.parametrize("family, attention, compared", [
    ("llama", "sdpa", 51), ("qwen3", "sdpa", 57), ("gemma3", "sdpa", 44), ("phi3", "sdpa", 39)])
def test_a_torch_onnx_export_passes_at_every_checkpoint(tmp_path, family, attention, compared):
    need("onnxscript")
    directory = tmp_path / family
    tiny_models.save(family, directory)
    result, report = check(directory, onnx_models.export_torch(directory, tmp_path / "model.onnx", attention))
    assert result.returncode == 0, json.dumps(report["first_divergence"])[:2000]
    assert report["summary"]["passed"] == compared and report["summary"]["not_comparable"] == 0
    assert statuses(report)["layers.0.k_rope"] == "pass" and statuses(report)["layers.1.attn_probs"] == "pass"


def test_an_eager_export_says_why_its_rope_and_probabilities_are_not_comparable(tmp_path):
    need("onnxscript")
    directory = tmp_path / "gemma2"
    tiny_models.save("gemma2", directory)
    result, report = check(directory, onnx_models.export_torch(directory, tmp_path / "model.onnx", "eager"))
    assert result.returncode == 0, json.dumps(report["first_divergence"])[:2000]
    assert "scaled_dot_product_attention" in reasons(report)["layers.0.q_rope"]
    assert report["summary"]["failed"] == 0 and report["summary"]["passed"] >= 30


def test_smollm2_built_by_onnxruntime_genai_passes(smollm2_reference, smollm2_model_dir, tmp_path):
    need("onnxruntime_genai")
    source = tmp_path / "smollm2"
    source.mkdir()
    for item in smollm2_model_dir.iterdir():
        (source / item.name).symlink_to(item)
    smollm2_reference.tokenizer.save_pretrained(source)
    built = onnx_models.build_genai(source, tmp_path / "built")
    result = parity("check", source, built, "--prompt",
                    "The capital of France is Paris, and the capital of Italy is", "--json", "-")
    assert result.stdout.startswith("{"), result.stdout[-2000:] + result.stderr[-2000:]
    report = json.loads(result.stdout)
    assert result.returncode == 0, json.dumps(report["first_divergence"])[:2000]
    assert report["summary"]["failed"] == 0 and report["summary"]["passed"] >= 390
    assert report["summary"]["not_comparable"] == 30 * 3 + 1     # q_rope, k_rope, attn_probs; the last layer's out


def test_a_damaged_onnx_file_is_refused_in_one_line(llama, tmp_path):
    need("onnx")
    damaged = tmp_path / "model.onnx"
    damaged.write_bytes(b"\x08\x07garbage that is not protobuf" * 10)
    assert_unusable(parity("check", llama, damaged, "--tokens", TOKENS), "not a readable ONNX model")
    assert_unusable(parity("check", llama, tmp_path / "absent.onnx", "--tokens", TOKENS), "no such ONNX model")


def test_a_graph_with_an_input_parity_cannot_fill_is_refused_in_one_line(llama, tmp_path):
    onnx = need("onnx")
    from onnx import TensorProto, helper

    graph = helper.make_graph([helper.make_node("Identity", ["token_type_ids"], ["logits"])], "g",
                              [helper.make_tensor_value_info("input_ids", TensorProto.INT64, [1, "T"]),
                               helper.make_tensor_value_info("token_type_ids", TensorProto.FLOAT, [1, "T", 96])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, "T", 96])])
    path = tmp_path / "odd.onnx"
    onnx.save(helper.make_model(graph), str(path))
    assert_unusable(parity("check", llama, path, "--tokens", TOKENS), "'token_type_ids'")


def test_a_damaged_genai_config_is_refused_in_one_line(llama, tmp_path):
    need("onnx")
    folder = tmp_path / "genai"
    folder.mkdir()
    (folder / "genai_config.json").write_text("{\"model\": 3}")
    assert_unusable(parity("check", llama, folder, "--tokens", TOKENS), "model.decoder.filename")
