"""llama.cpp against transformers, family by family, on tiny models converted by llama.cpp's own converter.

For each family: F32 passes with the model directory as the reference; with the
GGUF itself as the reference Q8_0 passes; with the directory as the reference
Q8_0 fails and the first divergence is named as the weights' rounding; F16 the
same for three of them (F16_FAMILIES). Conversions are cached (tests/gguf_models.py).
"""

from __future__ import annotations

import numpy as np
import pytest

from conftest import STRICT, need

pytestmark = [pytest.mark.llamacpp, pytest.mark.slow]

# Every family llama.cpp's converter and transformers both handle (StableLM: not yet mapped in llama.cpp).
FAMILIES = ("llama", "mistral", "qwen2", "qwen3", "gpt2", "gemma", "gemma2", "gemma3", "phi3", "olmo2", "granite",
            "mixtral", "qwen2_moe")
# transformers' GGUF loader cannot read gemma, olmo2 and granite GGUFs, and misreads MoE ones.
GGUF_REFERENCE_FAMILIES = ("llama", "mistral", "qwen2", "qwen3", "gpt2", "gemma2", "gemma3", "phi3")
# What llama.cpp's graph has no tensor for: Phi-3's gate and up are one matmul (see docs/capture.md).
NOT_IN_GRAPH = {"gpt2": ("pos_embed",),  # llama.cpp adds the position rows inside inpL, with no node of their own
                "phi3": ("mlp_gate", "mlp_up")}
MOE_FAMILIES = ("mixtral", "qwen2_moe")   # the experts chosen (ffn_moe_topk) and their weights read out too
# Q8_0 for every family; F16 for a dense, a Gemma and an MoE one: a Q8_0 file keeps its small tensors (norms,
# biases) in F16, so F16's rounding is met in every family through them.
F16_FAMILIES = ("llama", "gemma3", "qwen2_moe")


def _rounded(families):
    return [(family, "q8_0") for family in families] + [(family, "f16") for family in families
                                                        if family in F16_FAMILIES]
TOKENS = [0, 17, 5, 40, 8, 9, 31, 22, 64, 3]


def _gguf(family: str, outtype: str, **overrides):
    need("llama_cpp")
    need("gguf")
    import gguf_models

    if gguf_models.converter_dir() is None:
        if STRICT:
            raise FileNotFoundError("llama.cpp's converter is not in the parity cache: run scripts/install.sh")
        pytest.skip("llama.cpp's converter is not in the parity cache (scripts/install.sh puts it there)")
    return gguf_models.model_dir(family, **overrides), gguf_models.gguf(family, outtype, **overrides)


def _check(reference, gguf, **options):
    from parity.commands.check.pipeline import CheckOptions, run_check

    return run_check(CheckOptions(model=str(reference), candidate=f"llamacpp:{gguf}", tokens=TOKENS,
                                  decode_steps=options.pop("decode_steps", 0), **options))


def _compared(comparison) -> int:
    return sum(result.metrics is not None for result in comparison.checkpoints)


@pytest.mark.parametrize("family", FAMILIES)
def test_f32_build_passes_against_the_model_directory(family):
    directory, gguf = _gguf(family, "f32")
    comparison = _check(directory, gguf)
    assert comparison, comparison.first_divergence
    assert comparison.calibrated and _compared(comparison) >= 2 * 12 + 3
    assert {name.rsplit(".", 1)[-1] for name in comparison.missing} <= set(NOT_IN_GRAPH.get(family, ()))
    assert comparison.candidate_metadata["kv_type"] == "f16"
    if family in MOE_FAMILIES:   # compared, not missing: the same experts at every token, the weights within noise
        routing = [comparison.result(f"layers.{i}.{kind}") for i in (0, 1) for kind in ("moe_experts", "moe_weights")]
        assert all(result is not None and result.metrics is not None and not result.failed for result in routing)
        assert all(result.metrics.rel_l2 == 0 for result in routing[::2])


@pytest.mark.parametrize("family, outtype", _rounded(GGUF_REFERENCE_FAMILIES))
def test_rounded_builds_pass_against_the_gguf_itself(family, outtype):
    import gguf_models

    _, gguf = _gguf(family, outtype, **gguf_models.LOADABLE.get(family, {}))
    comparison = _check(gguf, gguf)
    assert comparison, comparison.first_divergence
    assert _compared(comparison) >= 2 * 12 + 3


@pytest.mark.parametrize("family, outtype", _rounded(FAMILIES))
def test_rounded_builds_against_the_directory_name_the_weights_rounding(family, outtype):
    directory, gguf = _gguf(family, outtype)
    comparison = _check(directory, gguf)
    assert not comparison
    causes = {d.cause: d for d in comparison.diagnoses}
    assert "weight_rounding" in causes, comparison.diagnoses
    assert causes["weight_rounding"].checkpoint == comparison.first_divergence.checkpoint
    formats = causes["weight_rounding"].message.split("rounded to ")[1].split(":")[0].split("/")
    assert outtype.upper() in formats    # Q8_0 files keep some small tensors in F16
    tensors = comparison.candidate_metadata["weight_rounding"]
    rounded = [t for t in tensors if t["type"] == outtype.upper()]
    assert rounded and all(0 < t["rel_l2"] <= 1.5 * t["expected_rel_l2"] for t in rounded)
    assert all(t["rel_l2"] < 1e-7 for t in tensors if t["type"] == "F32")


def test_an_f32_kv_cache_is_read_back_and_calibrated_without_cache_rounding():
    directory, gguf = _gguf("llama", "f32")
    comparison = _check(directory, gguf, kv_type="f32")
    assert comparison and comparison.candidate_metadata["kv_type"] == "f32"
    probabilities = [r for r in comparison.checkpoints if r.name.endswith("attn_probs")]
    assert probabilities and all(r.metrics.rel_l2 < 1e-5 for r in probabilities)


def test_an_f16_cache_held_to_f32_cache_noise_fails():
    """The calibration must follow the cache: llama.cpp with an F16 cache, emulated as F32, fails at attn_probs."""
    from parity.capture.llamacpp.runner import capture_llamacpp
    from parity.capture.llamacpp.numerics import llamacpp_numerics
    from parity.core.calibrate import noise_floors
    from parity.core.compare import CompareConfig, compare
    from parity.capture.hf.model import load_model

    directory, gguf = _gguf("llama", "f32")
    reference_model = load_model(directory, dtype="float64")
    reference = reference_model.capture(TOKENS)
    lowp_model = load_model(directory, dtype="float32")
    with llamacpp_numerics(lowp_model.model, gguf, kv_type="f32"):
        lowp = lowp_model.capture(TOKENS)
    candidate = capture_llamacpp(gguf, tokens=TOKENS, kv_type="f16")
    comparison = compare(reference, candidate, config=CompareConfig(noise=noise_floors(reference, lowp)))
    assert not comparison and comparison.first_divergence.checkpoint.endswith(("attn_probs", "attn_ctx"))


def test_gpt2_gelu_is_ggml_table_exactly():
    """llama.cpp's GELU output is the emulated table applied to its own input, to the last bit."""
    torch = pytest.importorskip("torch")
    from parity.capture.llamacpp.runner import capture_llamacpp
    from parity.capture.llamacpp.numerics import gelu_table

    _, gguf = _gguf("gpt2", "f32")
    trace = capture_llamacpp(gguf, tokens=TOKENS, checkpoints="layers.*.mlp_fc,layers.*.mlp_act")
    for layer in range(3):
        fc, act = trace[f"layers.{layer}.mlp_fc"], trace[f"layers.{layer}.mlp_act"]
        emulated = gelu_table(torch.from_numpy(fc)).numpy()
        assert np.mean(emulated == act) > 0.999
        assert np.abs(emulated - act).max() <= 1e-3 * np.abs(act).max()


def test_a_qwen3_gguf_transformers_cannot_load_is_refused_in_one_line(capsys):
    from parity.cli import main

    _, gguf = _gguf("qwen3", "f16")
    assert main(["check", str(gguf), f"llamacpp:{gguf}", "--tokens", "0,5"]) == 2
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert "ignores qwen3.attention.key_length (heads of 16) and builds heads of 128" in error
    assert "original model directory" in error


def test_a_mixtral_gguf_transformers_would_read_as_dense_is_refused(capsys):
    from parity.cli import main

    _, gguf = _gguf("mixtral", "f16")
    assert main(["check", str(gguf), f"llamacpp:{gguf}", "--tokens", "0,5"]) == 2
    assert "reads this mixture of 4 experts" in capsys.readouterr().err
