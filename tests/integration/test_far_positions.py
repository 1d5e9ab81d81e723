"""Far positions without long inputs: `check --start-position N` runs both sides with the first token at
absolute position N. A port that ignores dynamic RoPE scaling is exact below the model's context and wrong
past it: from position 0 it passes, at 100,000 its q_rope fails, named rope_scaling, in seconds."""

import json

import pytest

from conftest import ROOT
from test_cli import TOKEN_ARG, assert_unusable, parity

PORT = ROOT / "examples" / "scratch_llama.py"


@pytest.fixture(scope="module")
def dynamic_model(tmp_path_factory):
    import tiny_models

    return tiny_models.save("llama", tmp_path_factory.mktemp("dynamic"), max_position_embeddings=512,
                            rope_parameters={"rope_type": "dynamic", "rope_theta": 10000.0, "factor": 4.0})


def check(model, *args):
    result = parity("check", model, f"{PORT}:build", "--tokens", TOKEN_ARG, "--json", "-", *args)
    return result, json.loads(result.stdout) if result.stdout.startswith("{") else None


def test_a_port_without_dynamic_scaling_passes_from_0_and_fails_far_out(dynamic_model):
    near, report = check(dynamic_model)
    assert near.returncode == 0, near.stderr[-2000:]
    far, report = check(dynamic_model, "--start-position", "100000")
    assert far.returncode == 1
    assert report["first_divergence"]["checkpoint"] == "layers.0.q_rope"
    assert ("rope_scaling", "layers.0.q_rope") in [(d["cause"], d["checkpoint"]) for d in report["diagnoses"]]
    assert "dynamic scaling x4" in next(d["message"] for d in report["diagnoses"] if d["cause"] == "rope_scaling")
    assert "decode" in [n["check"] for n in report["not_checked"]]   # decoding is checked from position 0


def test_a_correct_port_passes_far_out_and_a_rope_bug_is_still_named_there(model_dirs):
    passing, report = check(model_dirs["llama"], "--start-position", "100000")
    assert passing.returncode == 0, passing.stderr[-2000:]
    result = parity("check", model_dirs["llama"], f"{PORT}:rope_interleaved", "--tokens", TOKEN_ARG, "--json", "-",
                    "--start-position", "100000")
    assert result.returncode == 1
    assert json.loads(result.stdout)["diagnoses"][0]["cause"] == "rope_layout"


def test_candidates_that_cannot_take_positions_say_so(model_dirs, tmp_path):
    (tmp_path / "plain.py").write_text(
        "import sys\nsys.path.insert(0, %r)\nimport scratch_llama\n\n"
        "def build(path):\n    model = scratch_llama.build(path)\n    forward = model.forward\n"
        "    model.forward = lambda ids: forward(ids)\n    return model\n" % str(ROOT / "examples"))
    result = parity("check", model_dirs["llama"], f"{tmp_path / 'plain.py'}:build", "--tokens", TOKEN_ARG,
                    "--start-position", "100")
    assert_unusable(result, "add a `positions` argument")
    trace = tmp_path / "from_zero.safetensors"
    assert parity("capture", model_dirs["llama"], "--tokens", TOKEN_ARG, "-o", trace).returncode == 0
    result = parity("check", model_dirs["llama"], trace, "--tokens", TOKEN_ARG, "--start-position", "100")
    assert_unusable(result, "was written with its first token at position 0")


def test_a_llamacpp_candidate_at_far_positions_is_refused_with_the_reason():
    from conftest import need

    need("llama_cpp")
    import gguf_models

    model = gguf_models.gguf("llama", "f32")
    result = parity("check", model, f"llamacpp:{model}", "--tokens", TOKEN_ARG, "--start-position", "100000")
    assert_unusable(result, "not checked for a llama.cpp candidate: its float32 RoPE angles")
