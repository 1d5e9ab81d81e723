"""The reference capture records what transformers' own modules compute."""

import sys

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from conftest import TOKENS  # noqa: E402
from parity.capture.hf.model import capture_hf, load_model  # noqa: E402
from parity.core.errors import CaptureError, OptionError  # noqa: E402
from tiny_models import FAMILIES  # noqa: E402


def model_outputs(directory):
    model = load_model(directory).model
    with torch.no_grad():
        return model, model(torch.tensor([TOKENS]), output_hidden_states=True)


@pytest.mark.parametrize("family", FAMILIES)
def test_logits_and_block_outputs_equal_the_models_own(family, model_dirs, reference_traces):
    trace = reference_traces[family]
    model, output = model_outputs(model_dirs[family])
    np.testing.assert_array_equal(trace["logits"], output.logits[0].numpy())
    layers = model.config.num_hidden_layers
    for i in range(layers - 1):  # transformers' last hidden state is after the final norm
        np.testing.assert_array_equal(trace[f"layers.{i}.out"], output.hidden_states[i + 1][0].numpy())
    np.testing.assert_array_equal(trace["final_norm"], output.hidden_states[-1][0].numpy())
    assert trace.tokens == TOKENS and trace.metadata["arch"] == model.config.model_type


@pytest.mark.parametrize("family", FAMILIES)
def test_every_checkpoint_of_the_family_is_captured(family, reference_traces):
    kinds = {name.split(".")[-1] for name in reference_traces[family].names if not name.startswith("raw.")}
    expected = {"embed", "attn_norm", "q", "k", "v", "attn_probs", "attn_ctx", "attn_out", "resid_mid",
                "mlp_norm", "mlp_act", "mlp_out", "out", "final_norm", "logits"}
    expected |= {"mlp_fc", "qkv", "pos_embed"} if family == "gpt2" else {"mlp_gate", "mlp_up", "q_rope", "k_rope"}
    expected |= {"q_norm", "k_norm"} if family == "qwen3" else set()
    assert kinds == expected


@pytest.mark.parametrize("family", ["llama", "qwen3"])
def test_rope_checkpoints_equal_transformers_rope_applied_to_q_and_k(family, model_dirs, reference_traces):
    trace = reference_traces[family]
    model = load_model(model_dirs[family]).model
    modeling = sys.modules[type(model.model.layers[0].self_attn).__module__]
    heads, kv_heads, head_dim = 4, 2, model.model.layers[0].self_attn.head_dim
    source = "q_norm" if family == "qwen3" else "q"
    positions = torch.arange(len(TOKENS))[None]
    cos, sin = model.model.rotary_emb(torch.zeros(1), positions)
    for layer in range(3):
        q = torch.from_numpy(trace[f"layers.{layer}.{source}"]).view(1, -1, heads, head_dim).transpose(1, 2)
        k = torch.from_numpy(trace[f"layers.{layer}.{source[0].replace('q', 'k')}{source[1:]}"]).view(1, -1, kv_heads, head_dim).transpose(1, 2)
        q_rope, k_rope = modeling.apply_rotary_pos_emb(q, k, cos, sin)
        np.testing.assert_allclose(trace[f"layers.{layer}.q_rope"], q_rope.transpose(1, 2).reshape(len(TOKENS), -1), rtol=1e-6, atol=1e-6)
        np.testing.assert_allclose(trace[f"layers.{layer}.k_rope"], k_rope.transpose(1, 2).reshape(len(TOKENS), -1), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("family", FAMILIES)
def test_checkpoints_are_consistent_with_each_other(family, reference_traces):
    trace = reference_traces[family]
    probs = trace["layers.0.attn_probs"]                                  # (H, T, S)
    assert probs.shape == (4, len(TOKENS), len(TOKENS))
    np.testing.assert_allclose(probs.sum(-1), 1.0, rtol=1e-5)
    assert np.all(np.triu(probs, k=1) == 0.0), "causal: no weight on future positions"  # exact: exp of a masked score underflows to 0
    for i in range(3):
        before = trace["embed"] if i == 0 else trace[f"layers.{i - 1}.out"]
        np.testing.assert_allclose(trace[f"layers.{i}.resid_mid"], before + trace[f"layers.{i}.attn_out"], rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(trace[f"layers.{i}.out"], trace[f"layers.{i}.resid_mid"] + trace[f"layers.{i}.mlp_out"], rtol=1e-5, atol=1e-6)
    if family == "gpt2":
        fc = torch.from_numpy(trace["layers.0.mlp_fc"])
        expected = torch.nn.functional.gelu(fc, approximate="tanh")
    else:
        gate, up = torch.from_numpy(trace["layers.0.mlp_gate"]), torch.from_numpy(trace["layers.0.mlp_up"])
        expected = torch.nn.functional.silu(gate) * up
    np.testing.assert_allclose(trace["layers.0.mlp_act"], expected.numpy(), rtol=1e-5, atol=1e-6)


def test_gpt2_q_k_v_are_the_split_of_the_fused_projection(model_dirs, reference_traces):
    trace = reference_traces["gpt2"]
    model = load_model(model_dirs["gpt2"]).model
    fused = model.transformer.h[0].attn.c_attn(torch.from_numpy(trace["layers.0.attn_norm"])[None])[0].detach().numpy()
    np.testing.assert_allclose(np.concatenate([trace["layers.0.q"], trace["layers.0.k"], trace["layers.0.v"]], -1), fused, rtol=1e-6, atol=1e-6)


def test_prompt_is_tokenized_by_the_models_tokenizer(model_dirs):
    trace = capture_hf(model_dirs["llama"], prompt="w1 w2 w3", checkpoints="logits")
    assert trace.tokens == [0, 4, 5, 6]  # <s> added by the tokenizer
    assert trace.names == ["logits"] and trace.metadata["prompt"] == "w1 w2 w3"


def test_bfloat16_capture_records_its_dtype(model_dirs):
    trace = capture_hf(model_dirs["qwen3"], tokens=TOKENS, dtype="bfloat16", checkpoints="layers.0.*,logits")
    assert trace.metadata["dtype"] == "bfloat16"
    assert trace.dtype_of("logits") == "bfloat16"


def test_attention_implementation_is_restored_after_capture(model_dirs):
    model = load_model(model_dirs["llama"])
    model.capture(TOKENS, checkpoints="layers.0.attn_probs")
    assert model.model.config._attn_implementation == "eager"
    assert not any(module._forward_hooks or module._forward_pre_hooks for module in model.model.modules())


def test_unusable_models_raise_clear_errors(tmp_path, model_dirs):
    with pytest.raises(CaptureError, match="no such model"):
        load_model(tmp_path / "nowhere")
    with pytest.raises(CaptureError, match="no config.json"):
        load_model(tmp_path)
    with pytest.raises(OptionError, match="outside the vocabulary"):
        capture_hf(model_dirs["llama"], tokens=[5, 1000])
    with pytest.raises(OptionError, match="--dtype int8"):
        load_model(model_dirs["llama"], dtype="int8")


def test_a_model_mapped_by_its_layers_outputs_is_captured_and_says_so(tmp_path):
    config = transformers.BertConfig(vocab_size=32, hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32, is_decoder=True)
    transformers.BertLMHeadModel(config).save_pretrained(tmp_path)
    trace = capture_hf(tmp_path, tokens=[5, 6, 7])
    assert {name for name in trace.names if not name.startswith("raw.")} == {"embed", "layers.0.out", "logits"}
    assert "no MLP module among its children" in trace.metadata["architecture"]["layers"][0]["outputs_only"]


@pytest.mark.parametrize("family", FAMILIES)
def test_greedy_through_the_cache_picks_the_tokens_full_passes_pick(family, model_dirs):
    from parity.core.generation import greedy

    model = load_model(model_dirs[family], dtype="float64")
    cached_tokens, cached_rows = model.greedy(TOKENS[:4], 24)
    full_tokens, full_rows = greedy(model.logits, TOKENS[:4], 24)
    assert cached_tokens == full_tokens
    # transformers computes RoPE's angles in float32 even for a float64 model, and torch's vectorized cos rounds
    # a position's angle by one ulp differently in a one-token batch: about 1e-7 of a log-prob, far below noise
    assert max(float(np.abs(cached - full).max()) for cached, full in zip(cached_rows, full_rows)) < 1e-6


def test_a_transformers_candidate_asked_to_spill_writes_its_trace_as_it_runs(model_dirs, tmp_path):
    """A long check hands a transformers candidate a spill file, as it does a port: the trace is written there as
    the forward makes it, not held whole (it was held: 3.7 GiB at T=2,048 for SmolLM2), and read back lazily."""
    from parity.capture.candidate import CandidateContext, TraceRequest
    from parity.capture.hf.candidate import HFCandidate

    candidate = HFCandidate.open(str(model_dirs["llama"]), CandidateContext())
    held = candidate.trace(TOKENS)
    path = tmp_path / "candidate.safetensors"
    spilled = candidate.trace(TOKENS, TraceRequest(spill_to=str(path)))
    assert path.exists() and not isinstance(spilled.tensors, dict)
    assert sorted(spilled.names) == sorted(held.names) and spilled.tokens == held.tokens
    for name in held.names:
        np.testing.assert_array_equal(spilled[name], held[name], err_msg=name)


def test_each_token_text_is_what_it_adds_to_a_text(model_dirs):
    """A word-level (or SentencePiece) decoder drops a token's leading space when the token is decoded alone; a
    server's token text keeps it, and the reference's pieces must match it."""
    reference = load_model(model_dirs["llama"])
    pieces = reference.vocab_pieces()
    ids = reference.tokenize("w1 w2 w3")
    assert [pieces[i] for i in ids[-2:]] == [" w2", " w3"]


def test_an_answer_is_scored_after_the_prompt_the_chat_template_renders(model_dirs, tmp_path):
    import shutil

    directory = tmp_path / "chat"
    shutil.copytree(model_dirs["llama"], directory)
    reference = load_model(directory)
    reference.tokenizer.chat_template = "{% for m in messages %}<s>{{ m['content'] }}{% endfor %} w9"
    rendered = reference.chat_prompt("w1 w2")
    assert rendered == "<s>w1 w2 w9"
    scored = reference.reference_tokens(" w3 w4", rendered)
    prompt_ids = reference.tokenizer(rendered, add_special_tokens=False)["input_ids"]
    assert scored.pieces == ("",) * len(prompt_ids) + (" w3", " w4")
    assert scored.offsets[len(prompt_ids):] == (0, 3) and scored.logprobs.shape[0] == len(prompt_ids) + 2
    reference.tokenizer.chat_template = None
    with pytest.raises(OptionError, match="has no chat template"):
        reference.chat_prompt("w1")
