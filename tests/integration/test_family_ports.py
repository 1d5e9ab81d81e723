"""A hand-written Gemma 3 (examples/gemma3_port.py): each family-specific bug is localized and named."""

import json
import subprocess
import sys

import pytest

torch = pytest.importorskip("torch")

import gemma3_port  # noqa: E402
import mixtral_port  # noqa: E402
import tiny_models  # noqa: E402
from conftest import ROOT, TOKENS  # noqa: E402
from parity.capture.hf.model import capture_hf  # noqa: E402
from parity.capture.torch.module import trace_module
from parity.core.compare import compare  # noqa: E402
from parity.diagnose import diagnose  # noqa: E402

BUGS = {  # bug -> (where it shows first, the cause named there)
    "embedding_not_scaled": (gemma3_port.Bugs(embed_scale=False), "embed", "embedding_scale"),
    "post_norm_skipped": (gemma3_port.Bugs(skip_post_attn_norm_layer=1), "layers.1.resid_mid", "post_norm_skipped"),
    "window_off_by_one": (gemma3_port.Bugs(window_off_by_one=True), "layers.0.attn_probs", "sliding_window"),
}


@pytest.fixture(scope="module")
def gemma3(tmp_path_factory):
    directory = tmp_path_factory.mktemp("gemma3")
    tiny_models.save("gemma3", directory)
    tiny_models.save_tokenizer(directory)
    return directory, capture_hf(directory, tokens=TOKENS)


def port_trace(directory, bugs):
    port = gemma3_port.build(directory, bugs)
    return trace_module(port, TOKENS, taps=port.parity_taps)


def test_the_correct_port_matches_every_canonical_checkpoint(gemma3):
    directory, reference = gemma3
    comparison = compare(reference, port_trace(directory, gemma3_port.Bugs()))
    assert comparison, comparison.first_divergence
    assert not comparison.missing and not comparison.extra
    canonical = [name for name in reference.names if not name.startswith("raw.")]
    assert len(comparison.checkpoints) == len(canonical)
    kinds = {name.rsplit(".", 1)[-1] for name in canonical}
    assert {"embed_tokens", "attn_post_norm", "mlp_post_norm", "q_norm", "k_norm"} <= kinds


@pytest.mark.parametrize("bug", BUGS)
def test_each_family_bug_is_localized_and_named(bug, gemma3):
    directory, reference = gemma3
    bugs, planted, cause = BUGS[bug]
    candidate = port_trace(directory, bugs)
    comparison = diagnose(compare(reference, candidate), reference, candidate)
    assert comparison.first_divergence.checkpoint == planted
    named = {(d.cause, d.checkpoint) for d in comparison.diagnoses}
    assert (cause, planted) in named, comparison.diagnoses
    assert not any(d.cause in ("causal_mask", "scale_factor") for d in comparison.diagnoses)  # nothing generic or wrong


def test_the_window_diagnosis_gives_both_widths(gemma3):
    directory, reference = gemma3
    candidate = port_trace(directory, gemma3_port.Bugs(window_off_by_one=True))
    comparison = diagnose(compare(reference, candidate), reference, candidate)
    message = next(d.message for d in comparison.diagnoses if d.cause == "sliding_window")
    assert "window 4" in message and "at most 4 keys" in message and "up to 5" in message and "off by one" in message


@pytest.fixture(scope="module")
def mixtral(tmp_path_factory):
    directory = tmp_path_factory.mktemp("mixtral")
    tiny_models.save("mixtral", directory)
    return directory, capture_hf(directory, tokens=TOKENS)


def test_the_correct_mixtral_port_agrees_on_routing_and_everything_else(mixtral):
    directory, reference = mixtral
    port = mixtral_port.build(directory)
    comparison = compare(reference, trace_module(port, TOKENS, taps=port.parity_taps))
    assert comparison and not comparison.missing and not comparison.extra
    assert comparison.result("layers.1.moe_experts").metrics.mismatched == 0


def test_experts_chosen_from_the_wrong_axis_are_named(mixtral):
    directory, reference = mixtral
    port = mixtral_port.build(directory, mixtral_port.Bugs(router_softmax_axis="tokens"))
    candidate = trace_module(port, TOKENS, taps=port.parity_taps)
    comparison = diagnose(compare(reference, candidate), reference, candidate)
    assert comparison.first_divergence.checkpoint == "layers.0.moe_experts"
    assert comparison.result("layers.0.moe_router_logits").status == "pass"
    message = next(d.message for d in comparison.diagnoses if d.cause == "router")
    assert "router logits agree" in message and "experts chosen from the wrong axis" in message


FACTORY = (
    "import gemma3_port\n"
    "def wrong_window(path):\n"
    "    return gemma3_port.build(path, gemma3_port.Bugs(window_off_by_one=True))\n"
)


@pytest.mark.slow
def test_parity_check_names_the_window_bug_end_to_end(gemma3, tmp_path):
    directory, _ = gemma3
    token_arg = ",".join(map(str, TOKENS))
    run = lambda *args: subprocess.run([sys.executable, "-m", "parity", "check", *map(str, args)],  # noqa: E731
                                       capture_output=True, text=True, cwd=ROOT / "examples", timeout=600)
    passed = run(directory, ROOT / "examples/gemma3_port.py:build", "--tokens", token_arg)
    assert passed.returncode == 0, passed.stdout + passed.stderr
    factory = tmp_path / "planted.py"
    factory.write_text(FACTORY)
    report = tmp_path / "r.json"
    failed = run(directory, f"{factory}:wrong_window", "--tokens", token_arg, "--json", report)
    assert failed.returncode == 1, failed.stdout + failed.stderr
    assert "diagnosis sliding_window at layers.0.attn_probs" in failed.stdout
    data = json.loads(report.read_text())
    assert data["first_divergence"]["checkpoint"] == "layers.0.attn_probs"
    assert data["raw"] == {"compared": 0, "failed": [], "unpaired": 0, "not_comparable": []}  # a hand-written port: no raw capture at all


TRANSFORMERS_FACTORY = (
    "import torch, transformers\n"
    "def shared_gate_tripled(path):\n"
    "    model = transformers.AutoModelForCausalLM.from_pretrained(path, attn_implementation='eager')\n"
    "    with torch.no_grad():\n"
    "        model.model.layers[0].mlp.shared_expert_gate.weight.mul_(3.0)\n"
    "    return model\n"
)


@pytest.mark.slow
def test_two_transformers_models_are_compared_module_by_module(tmp_path):
    directory = tmp_path / "qwen2_moe"
    tiny_models.save("qwen2_moe", directory)
    factory = tmp_path / "modified.py"
    factory.write_text(TRANSFORMERS_FACTORY)
    report = tmp_path / "r.json"
    result = subprocess.run([sys.executable, "-m", "parity", "check", str(directory), f"{factory}:shared_gate_tripled",
                             "--tokens", ",".join(map(str, TOKENS)), "--json", str(report), "--decode-steps", "0"],
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 1, result.stdout + result.stderr
    data = json.loads(report.read_text())
    assert data["first_divergence"]["checkpoint"] == "layers.0.mlp_out"
    assert data["raw"]["compared"] > 5 and data["raw"]["unpaired"] == 0
    assert "raw.model.layers.0.mlp.shared_expert_gate" in data["raw"]["failed"]
    assert "raw modules (no canonical role):" in result.stdout and "shared_expert_gate" in result.stdout
