"""Planted bugs in hand-written ports are localized to the checkpoint and layer where they were planted.

The ports in examples/ are independent re-implementations loaded with the
reference's weights; each Bugs(...) plants one mistake that ports really make.
"""

import pytest

torch = pytest.importorskip("torch")

import gpt2_port  # noqa: E402
import llama_port  # noqa: E402
from conftest import TOKENS  # noqa: E402
from parity.capture.hf.model import capture_hf  # noqa: E402
from parity.capture.torch.module import trace_module
from parity.core.compare import compare  # noqa: E402

LLAMA_BUGS = {  # bug -> (checkpoint where it is planted, layer)
    "rope_layout": (llama_port.Bugs(rope_layout="adjacent"), "layers.0.q_rope"),
    "norm_epsilon": (llama_port.Bugs(norm_eps=1e-5), "layers.0.attn_norm"),
    "missing_residual": (llama_port.Bugs(missing_residual_layer=1), "layers.1.resid_mid"),
    "gqa_head_order": (llama_port.Bugs(gqa_order="tile"), "layers.0.attn_probs"),
    "no_causal_mask": (llama_port.Bugs(causal_mask=False), "layers.0.attn_probs"),
    "nan_in_one_layer": (llama_port.Bugs(nan_layer=2), "layers.2.mlp_out"),
}
GPT2_BUGS = {
    "norm_epsilon": (gpt2_port.Bugs(norm_eps=1e-6), "layers.0.attn_norm"),
    "missing_residual": (gpt2_port.Bugs(missing_residual_layer=2), "layers.2.resid_mid"),
    "no_causal_mask": (gpt2_port.Bugs(causal_mask=False), "layers.0.attn_probs"),
    "nan_in_one_layer": (gpt2_port.Bugs(nan_layer=1), "layers.1.mlp_out"),
}


def port_trace(module, directory, bugs):
    port = module.build(directory, bugs)
    return trace_module(port, TOKENS, taps=port.parity_taps)


@pytest.mark.parametrize("family", ["llama", "mistral", "qwen2", "qwen3"])
def test_correct_llama_family_port_passes_every_checkpoint(family, model_dirs, reference_traces):
    comparison = compare(reference_traces[family], port_trace(llama_port, model_dirs[family], llama_port.Bugs()))
    assert comparison, comparison.first_divergence
    assert not comparison.missing and not comparison.extra
    assert len(comparison.checkpoints) == len([n for n in reference_traces[family].tensors if not n.startswith("raw.")])


def test_correct_gpt2_port_passes_every_checkpoint(model_dirs, reference_traces):
    comparison = compare(reference_traces["gpt2"], port_trace(gpt2_port, model_dirs["gpt2"], gpt2_port.Bugs()))
    assert comparison and not comparison.missing and not comparison.extra


def test_float32_port_passes_against_a_float64_reference(model_dirs):
    reference = capture_hf(model_dirs["qwen3"], tokens=TOKENS, dtype="float64")
    comparison = compare(reference, port_trace(llama_port, model_dirs["qwen3"], llama_port.Bugs()))
    assert comparison
    assert max(r.metrics.rel_l2 for r in comparison.checkpoints) > 0  # real rounding differences, within tolerance


@pytest.mark.parametrize("family", ["llama", "qwen3"])
@pytest.mark.parametrize("bug", LLAMA_BUGS)
def test_llama_family_bug_is_localized_where_planted(family, bug, model_dirs, reference_traces):
    bugs, planted = LLAMA_BUGS[bug]
    comparison = compare(reference_traces[family], port_trace(llama_port, model_dirs[family], bugs))
    assert not comparison
    assert comparison.first_divergence.checkpoint == planted
    assert comparison.first_divergence.layer == int(planted.split(".")[1])


@pytest.mark.parametrize("bug", GPT2_BUGS)
def test_gpt2_bug_is_localized_where_planted(bug, model_dirs, reference_traces):
    bugs, planted = GPT2_BUGS[bug]
    comparison = compare(reference_traces["gpt2"], port_trace(gpt2_port, model_dirs["gpt2"], bugs))
    assert not comparison
    assert comparison.first_divergence.checkpoint == planted


def test_nan_is_reported_with_its_position(model_dirs, reference_traces):
    comparison = compare(reference_traces["llama"], port_trace(llama_port, model_dirs["llama"], llama_port.Bugs(nan_layer=1)))
    result = comparison.result("layers.1.mlp_out")
    assert result.metrics.nan_candidate == 1
    assert comparison.first_divergence.position == len(TOKENS) - 1


def test_a_wrongly_converted_weight_is_named_when_both_traces_carry_weights(model_dirs):
    from parity.capture.hf.model import load_model
    from parity.diagnose import diagnose

    reference_model = load_model(model_dirs["llama"])
    reference = reference_model.capture(TOKENS, weights=True)
    converted = load_model(model_dirs["llama"]).model
    with torch.no_grad():
        converted.model.layers[1].self_attn.k_proj.weight.neg_()
    candidate = trace_module(converted, TOKENS, taps="hf", weights=True)
    comparison = diagnose(compare(reference, candidate), reference, candidate)
    assert comparison.first_divergence.checkpoint == "layers.1.k"
    found = {(d.cause, d.checkpoint): d.message for d in comparison.diagnoses}
    assert "it is negated" in found[("weight_mismatch", "layers.1.k")]
