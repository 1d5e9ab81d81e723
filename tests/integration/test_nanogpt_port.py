"""A nanoGPT-structured port (examples/nanogpt_port.py) with weights transplanted from a tiny HF
GPT-2: every planted bug localized and named, in float32 and bfloat16, on the flash path (no
attention probabilities) and on the manual path with a Probe; the correct port passes, with and
without --weights, although its forward returns the last position's logits only.

The test model's q and k projections are scaled up so that its attention is as peaked as a
trained model's (random weights give near-uniform attention, where a softmax temperature
changes little).
"""

import functools
import json
import subprocess
import sys

import pytest

torch = pytest.importorskip("torch")

import nanogpt_port  # noqa: E402
import tiny_models  # noqa: E402
from conftest import TOKENS  # noqa: E402
from parity.capture.hf.model import capture_hf, load_model  # noqa: E402
from parity.capture.torch.module import trace_module
from parity.diagnose.compared import compare_and_diagnose  # noqa: E402
from parity.core.calibrate import noise_floors  # noqa: E402
from parity.core.compare import CompareConfig  # noqa: E402

B = nanogpt_port.Bugs
BUGS = {  # bug -> (planted, checkpoint where it is planted, a right cause)
    "attention scaled by 1/d": (B(attention_scale="d"), "layers.0.{attn}", "attention_scale"),
    "no causal mask": (B(causal_mask=False), "layers.0.{attn}", "causal_mask"),
    "q and k swapped after the split": (B(swap_qk=True), "layers.0.{attn}", "swapped_operands"),
    "untied random lm_head": (B(untied_lm_head=True), "logits", "output_projection"),
    "position embeddings off by one": (B(position_offset=1), "pos_embed", "position_embedding"),
    "final norm ignores its weight": (B(final_norm_weight=False), "final_norm", "norm_affine"),
    "extra BOS inside the model": (B(extra_bos=True), "pos_embed", "token_shift"),
    "ln_2 skipped": (B(skip_mlp_norm_layer=1), "layers.1.mlp_norm", "op_skipped"),
    "position embeddings left out": (B(position_embeddings="none"), "embed", "position_embedding"),
    "position embeddings added twice": (B(position_embeddings="twice"), "embed", "position_embedding"),
    "c_attn bias not loaded": (B(attention_bias=False), "layers.0.q", "missing_bias"),
}
SHARPNESS = 4.0  # q and k weights times this: mean top attention probability 0.40 instead of 0.15


def save_peaked_gpt2(directory):
    model = tiny_models.build("gpt2")
    width = model.config.n_embd
    with torch.no_grad():
        for block in model.transformer.h:
            block.attn.c_attn.weight[:, : 2 * width] *= SHARPNESS   # Conv1D (in, out): q and k columns
            block.attn.c_attn.bias[: 2 * width] *= SHARPNESS
    model.save_pretrained(directory)
    return directory


@pytest.fixture(scope="module")
def gpt2_dir(tmp_path_factory):
    return save_peaked_gpt2(tmp_path_factory.mktemp("gpt2_peaked"))


@pytest.fixture(scope="module")
def setup(gpt2_dir):
    @functools.cache
    def get(dtype: str):
        reference = capture_hf(gpt2_dir, tokens=TOKENS, dtype="float64")
        lowp = capture_hf(gpt2_dir, tokens=TOKENS, dtype=dtype)
        return CompareConfig(noise=noise_floors(reference, lowp), noise_dtype=dtype), reference

    return get


def run(gpt2_dir, setup, dtype, bugs, probe):
    config, reference = setup(dtype)
    port = nanogpt_port.build(gpt2_dir, bugs, dtype=getattr(torch, dtype), probe=probe)
    candidate = trace_module(port, TOKENS, taps=getattr(port, "parity_taps", "nanogpt"))
    return compare_and_diagnose(reference, candidate, config)


@pytest.mark.parametrize("probe", [False, True], ids=["flash", "probe"])
@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
@pytest.mark.parametrize("bug", BUGS)
def test_a_planted_bug_is_localized_and_named(gpt2_dir, setup, bug, dtype, probe):
    bugs, planted, cause = BUGS[bug]
    planted = planted.format(attn="attn_probs" if probe else "attn_ctx")
    comparison = run(gpt2_dir, setup, dtype, bugs, probe)
    assert not comparison
    assert comparison.first_divergence.checkpoint == planted
    assert (cause, planted) in [(d.cause, d.checkpoint) for d in comparison.diagnoses], comparison.diagnoses
    assert "precision_noise" not in [d.cause for d in comparison.diagnoses]


@pytest.mark.parametrize("probe", [False, True], ids=["flash", "probe"])
@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_the_correct_port_passes_and_its_last_position_logits_are_compared(gpt2_dir, setup, dtype, probe):
    comparison = run(gpt2_dir, setup, dtype, B(), probe)
    assert comparison, comparison.first_divergence
    logits = comparison.result("logits")
    assert logits.shape_candidate == (1, tiny_models.VOCAB) and logits.metrics is not None
    assert any("holds the last 1 of 10 positions" in note for note in comparison.notes)
    absent = [note for note in comparison.notes if "records no attention probabilities" in note]
    assert bool(absent) != probe and (probe or "Probe" in absent[0])


def test_the_correct_port_passes_with_weights(gpt2_dir):
    """GPT-2's Conv1D stores (in, out): recorded as nn.Linear's (out, in), every weight agrees."""
    reference = load_model(str(gpt2_dir), dtype="float32").capture(TOKENS, weights=True)
    port = nanogpt_port.build(gpt2_dir)
    candidate = trace_module(port, TOKENS, taps="nanogpt", weights=True)
    comparison = compare_and_diagnose(reference, candidate, CompareConfig())
    weights = [r for r in comparison.checkpoints if r.name.endswith(".weight")]
    assert comparison and len(weights) >= 4 * 3
    assert all(r.shape_reference == r.shape_candidate and r.layout is None for r in weights)
    assert "layout_permuted" not in [d.cause for d in comparison.diagnoses]


def parity(*args):
    return subprocess.run([sys.executable, "-m", "parity", *map(str, args)], capture_output=True, text=True, timeout=300)


@pytest.mark.slow
def test_cli_check_of_the_port_with_weights(gpt2_dir, tmp_path):
    from pathlib import Path

    port = Path(__file__).resolve().parents[2] / "examples" / "nanogpt_port.py"
    tokens = ",".join(map(str, TOKENS))
    passed = parity("check", gpt2_dir, f"{port}:build", "--tokens", tokens, "--weights", "--json", "-")
    assert passed.returncode == 0, passed.stderr
    report = json.loads(passed.stdout)
    assert [d["cause"] for d in report["diagnoses"]] == ["precision_noise"]
    assert any("last 1 of 10 positions" in note for note in report["notes"])


def test_a_trace_made_from_other_token_ids_is_a_token_shift(gpt2_dir, setup):
    """GPT-2 run with an extra BOS in its input ids: the traces' token ids say so."""
    config, reference = setup("float32")
    port = nanogpt_port.build(gpt2_dir)
    candidate = trace_module(port, [tiny_models.VOCAB - 1] + TOKENS, taps="nanogpt")
    comparison = compare_and_diagnose(reference, candidate, config)
    found = [d for d in comparison.diagnoses if d.cause == "token_shift"]
    assert not comparison and found and "prepended" in found[0].message


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_a_bug_no_detector_knows_is_no_known_cause_with_evidence(gpt2_dir, setup, dtype):
    """Corrupted c_fc weights in one layer: localized, not explained, and never called noise."""
    config, reference = setup(dtype)
    port = nanogpt_port.build(gpt2_dir, dtype=getattr(torch, dtype))
    with torch.no_grad():
        weight = port.transformer.h[1].mlp.c_fc.weight
        weight.add_(torch.randn(weight.shape, generator=torch.Generator().manual_seed(0)).to(weight.dtype) * 0.02)
    comparison = compare_and_diagnose(reference, trace_module(port, TOKENS, taps="nanogpt"), config)
    assert comparison.first_divergence.checkpoint == "layers.1.mlp_fc"
    assert [(d.cause, d.checkpoint) for d in comparison.diagnoses] == [("no_known_cause", "layers.1.mlp_fc")]
    message = comparison.diagnoses[0].message
    assert "per position" in message and "per channel" in message and "best affine fit" in message
    assert "its input layers.1.mlp_norm passes" in message
