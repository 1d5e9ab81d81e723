"""Eager attention in blocks of query rows (capture/hf/attention.py): the same trace as the whole call."""

from __future__ import annotations

import numpy as np
import pytest

import tiny_models

TOKENS = list(range(3, 40))


@pytest.fixture
def tiny_blocks(monkeypatch):
    """Blocks of a few rows: ROW_BLOCK_BYTES below one layer's probabilities at len(TOKENS) tokens."""
    import parity.capture.hf.attention as attention

    calls = []
    original = attention._in_row_blocks

    def counted(*args, **kwargs):
        calls.append(args[1])
        return original(*args, **kwargs)

    monkeypatch.setattr(attention, "ROW_BLOCK_BYTES", 4 * len(TOKENS) * 8 * 5)   # ~5 rows of 4 heads, float64
    monkeypatch.setattr(attention, "_in_row_blocks", counted)
    return calls


@pytest.mark.parametrize("family", tiny_models.ALL_FAMILIES)
def test_blocked_attention_records_the_same_trace_as_the_whole_call(family, tiny_blocks, tmp_path):
    """Every family: each checkpoint (outputs, probabilities, logits) equal to the unblocked capture."""
    from parity.capture.hf.model import load_model

    import parity.capture.hf.attention as attention

    model = load_model(tiny_models.save(family, tmp_path / family), dtype="float64")
    blocked = model.capture(TOKENS)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(attention, "ROW_BLOCK_BYTES", 1 << 40)
        whole = model.capture(TOKENS)
    assert tiny_blocks and all(rows < len(TOKENS) for rows in tiny_blocks), "the blocked path did not run"
    assert blocked.names == whole.names
    for name in whole.names:
        np.testing.assert_allclose(blocked[name], whole[name], rtol=1e-12, atol=1e-14, err_msg=name)


def test_probabilities_left_out_are_never_assembled_and_the_rest_is_unchanged(tiny_blocks, tmp_path):
    """--checkpoints '*,!*.attn_probs': the blocks' probabilities are dropped as they are made."""
    import parity.capture.hf.attention as attention
    from parity.capture.hf.model import load_model

    model = load_model(tiny_models.save("llama", tmp_path / "llama"), dtype="float64")
    assembled = []
    original = attention._in_row_blocks
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(attention, "_in_row_blocks",
                      lambda *args, **kwargs: assembled.append(args[2]) or original(*args, **kwargs))
        trace = model.capture(TOKENS, checkpoints="*,!*.attn_probs")
    assert assembled and not any(assembled)
    assert not [name for name in trace.names if name.endswith("attn_probs")]
    whole = model.capture(TOKENS, checkpoints="*,!*.attn_probs")
    for name in whole.names:
        np.testing.assert_allclose(trace[name], whole[name], rtol=1e-13, atol=1e-15, err_msg=name)


def test_a_trace_written_to_disk_in_blocks_matches_the_one_held(tiny_blocks, tmp_path):
    """capture_to_file (the spilled reference) through blocked attention."""
    from parity.capture.hf.model import load_model
    from parity.core.trace import load_trace

    model = load_model(tiny_models.save("qwen2", tmp_path / "qwen2"), dtype="float64")
    held = model.capture(TOKENS)
    model.capture_to_file(TOKENS, tmp_path / "trace.safetensors")
    written = load_trace(tmp_path / "trace.safetensors")
    assert tiny_blocks
    for name in held.names:
        np.testing.assert_allclose(written[name], held[name], rtol=1e-13, atol=1e-15, err_msg=name)
