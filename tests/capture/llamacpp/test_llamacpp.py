"""llama.cpp, layer by layer, on the real SmolLM2 GGUF, against transformers running the same file."""

import numpy as np
import pytest

from conftest import need
from parity.capture.llamacpp.runner import LlamaCppRunner
from parity.core.rope_layout import unpermute_qk
from parity.capture.gguf.smollm2 import DEFAULT_PROMPT
from parity.core.compare import compare
from parity.core.conventions import adapt
from parity.core.results import NOT_COMPARABLE

REQUIRED = ["attn_norm", "q", "k", "v", "q_rope", "k_rope", "attn_probs", "attn_ctx", "attn_out", "resid_mid",
            "mlp_norm", "mlp_gate", "mlp_up", "mlp_act", "mlp_out", "out"]


@pytest.fixture(scope="module")
def runner(smollm2_gguf):
    need("llama_cpp")
    with LlamaCppRunner(smollm2_gguf) as runner:
        yield runner


@pytest.fixture(scope="module")
def tokens(smollm2_reference):
    return smollm2_reference.tokenize(DEFAULT_PROMPT)


@pytest.fixture(scope="module")
def pair(runner, smollm2_reference, tokens):
    return smollm2_reference.capture(tokens, raw=False), runner.capture(tokens)  # llama.cpp has no raw modules


def test_unpermute_inverts_the_gguf_conversion_permutation():
    rng = np.random.default_rng(0)
    heads, head_dim, width, count = 3, 8, 16, 5
    weight = rng.standard_normal((heads * head_dim, width))            # transformers' q_proj rows
    # what GGUF conversion stores: rows of each head reordered so that RoPE pairs are adjacent
    converted = weight.reshape(heads, 2, head_dim // 2, width).swapaxes(1, 2).reshape(weight.shape)
    hidden = rng.standard_normal((count, width))
    np.testing.assert_allclose(unpermute_qk(hidden @ converted.T, head_dim), hidden @ weight.T)


def test_trace_holds_every_required_checkpoint_for_all_30_layers(pair, tokens):
    _, candidate = pair
    count = len(tokens)
    for layer in range(30):
        for kind in REQUIRED:
            assert f"layers.{layer}.{kind}" in candidate, f"layers.{layer}.{kind}"
    for name in ("embed", "final_norm", "logits"):
        assert name in candidate
    assert candidate["embed"].shape == (count, 576)
    assert candidate["layers.3.q_rope"].shape == (count, 9 * 64)
    assert candidate["layers.3.k"].shape == (count, 3 * 64)
    assert candidate["layers.3.attn_probs"].shape == (9, count, count)
    assert candidate["logits"].shape == (count, 49152)
    assert candidate.tokens == tokens and "Q4_1" in candidate.metadata["weights"]


def test_attention_probabilities_are_causal_distributions(pair):
    _, candidate = pair
    probabilities = candidate["layers.7.attn_probs"]
    np.testing.assert_allclose(probabilities.sum(-1), 1.0, rtol=1e-5)
    assert np.all(np.triu(probabilities, k=1) == 0.0)  # exact: exp(-inf) is 0


def test_aligned_checkpoints_match_the_reference_in_direction(pair):
    reference, candidate = pair
    comparison = compare(reference, candidate)
    assert not comparison.missing and not comparison.extra
    cosines = {r.name: r.metrics.cosine for r in comparison.checkpoints}
    assert len(cosines) == sum(not name.startswith("raw.") for name in reference.tensors)  # raw.*: not llama.cpp's
    assert min(cosines.values()) > 0.99, min(cosines, key=cosines.get)


def test_q_and_k_left_in_gguf_order_are_read_as_the_pair_layout_and_caught_when_strict(runner, pair, tokens):
    reference, _ = pair
    runner.undo_qk_permutation = False
    try:
        misaligned = runner.capture(tokens, checkpoints="layers.*.q,layers.*.k,layers.*.q_rope,layers.*.k_rope")
    finally:
        runner.undo_qk_permutation = True
    view, adaptations = adapt(reference, misaligned)   # q and k both in pair order: a convention, not a bug
    comparison = compare(reference, view)
    assert len(comparison.checkpoints) == 4 * 30
    assert min(r.metrics.cosine for r in comparison.checkpoints) > 0.99
    assert [a.convention for a in adaptations] == ["rope_pairs"] and "interleaved RoPE layout" in adaptations[0].note
    held, _ = adapt(reference, misaligned, strict=frozenset({"rope_pairs"}))
    assert max(r.metrics.cosine for r in compare(reference, held).checkpoints) < 0.5


def test_llamacpp_tokenizes_like_the_reference(runner, smollm2_reference):
    assert runner.tokenize(DEFAULT_PROMPT) == smollm2_reference.tokenize(DEFAULT_PROMPT)


def test_checkpoints_filter_and_bad_tokens(runner, tmp_path):
    trace = runner.capture([504, 3575], checkpoints="layers.0.*")
    assert trace.names and all(name.startswith("layers.0.") for name in trace.names)
    from parity.core.errors import OptionError

    with pytest.raises(OptionError, match="outside the vocabulary"):
        runner.capture([10**6])
    with pytest.raises(OptionError, match="outside the vocabulary"):       # written to a file too
        runner.capture([10**6], path=tmp_path / "trace.safetensors")
    assert not (tmp_path / "trace.safetensors").exists()


def test_declared_not_comparable_checkpoints_are_reported_with_their_reason(pair):
    reference, candidate = pair
    tensors = {name: candidate[name] for name in candidate.names if name != "layers.0.attn_probs"}
    from parity.core.trace import make_trace

    declared = make_trace(tensors, {**candidate.metadata, "not_comparable": {"layers.0.attn_probs": "fused by flash attention"}})
    comparison = compare(reference, declared)
    result = comparison.result("layers.0.attn_probs")
    assert result.status == NOT_COMPARABLE and result.reason == "fused by flash attention"
    assert "layers.0.attn_probs" not in comparison.missing


def test_greedy_through_the_cache_follows_its_own_decode_rows(runner, tokens):
    count = 12
    generated, rows = runner.greedy(tokens, count)
    assert len(generated) == len(rows) == count
    assert [int(np.argmax(row)) for row in rows] == generated
    decoded = runner.incremental_logits(tokens, generated)            # the same cache path, teacher-forced
    assert [int(np.argmax(row)) for row in decoded[:-1]] == generated


def test_a_trace_written_layer_by_layer_holds_what_the_held_trace_holds(runner, tokens, pair, tmp_path):
    from parity.core.trace import load_trace

    held = pair[1]
    streamed = runner.capture(tokens, path=tmp_path / "candidate.safetensors")
    assert not isinstance(streamed.tensors, dict)                          # read back from the file, lazily
    assert sorted(load_trace(tmp_path / "candidate.safetensors").names) == sorted(held.names)
    assert sorted(streamed.names) == sorted(held.names)
    assert {key: value for key, value in streamed.metadata.items() if key != "format"} == held.metadata
    for name in held.names:
        assert np.array_equal(np.asarray(streamed.tensors[name]), held.tensors[name]), name


@pytest.mark.parametrize("to_file", [False, True], ids=["held", "written"])
def test_micro_batches_give_the_trace_of_one_batch(runner, tokens, pair, tmp_path, monkeypatch, to_file):
    """An input longer than UBATCH runs a micro-batch at a time through the KV cache, as llama.cpp runs a long
    prompt: every checkpoint (probabilities over the keys cached so far, zero past them) and the logits bit for
    bit as one batch gives them, held or written where their rows go."""
    import parity.capture.llamacpp.runner as module

    held = pair[1]
    monkeypatch.setattr(module, "UBATCH", 5)
    assert len(tokens) > 2 * 5
    blocked = runner.capture(tokens, path=tmp_path / "candidate.safetensors" if to_file else None)
    assert sorted(blocked.names) == sorted(held.names)
    assert blocked.metadata.get("not_comparable") == held.metadata.get("not_comparable")
    for name in held.names:
        np.testing.assert_array_equal(np.asarray(blocked.tensors[name]), held.tensors[name], err_msg=name)
    probabilities = np.asarray(blocked.tensors["layers.3.attn_probs"])       # (H, T, T): causal rows
    assert np.all(np.triu(probabilities, k=1) == 0)
    np.testing.assert_allclose(probabilities.sum(-1), 1.0, atol=1e-5)


def test_a_long_prompt_decoded_through_the_cache_is_prefilled_a_micro_batch_at_a_time(runner, tokens,
                                                                                     monkeypatch):
    """--decode-steps after a prompt longer than UBATCH: the same logits at every step as one prefill batch."""
    import parity.capture.llamacpp.runner as module

    continuation = [17, 300, 5]
    whole = runner.incremental_logits(tokens, continuation)
    monkeypatch.setattr(module, "UBATCH", 4)
    np.testing.assert_array_equal(runner.incremental_logits(tokens, continuation), whole)
