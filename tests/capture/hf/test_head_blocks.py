"""The output head in blocks of rows after the forward (capture/hf/head.py): the trace of the whole call."""

from __future__ import annotations

import numpy as np
import pytest

import tiny_models

TOKENS = list(range(3, 40))


@pytest.fixture
def small_blocks(monkeypatch):
    """LOGITS_BLOCK_BYTES below a tiny model's logits, so that the head runs a few rows at a time."""
    import parity.capture.hf.head as head

    written = []
    original = head.BlockedHead.write

    def counted(self, writer):
        written.append(self.names)
        return original(self, writer)

    monkeypatch.setattr(head, "LOGITS_BLOCK_BYTES", 4 * 8 * 128 * 4)
    monkeypatch.setattr(head.BlockedHead, "write", counted)
    return written


@pytest.mark.parametrize("family", tiny_models.ALL_FAMILIES)
def test_logits_written_a_block_of_rows_at_a_time_are_the_whole_calls(family, small_blocks, tmp_path):
    """Every family (softcapped and scaled logits included): the same names and values as the held capture."""
    from parity.capture.hf.model import load_model
    from parity.core.trace import load_trace

    model = load_model(tiny_models.save(family, tmp_path / family), dtype="float64")
    held = model.capture(TOKENS)
    model.capture_to_file(TOKENS, tmp_path / "trace.safetensors")
    assert small_blocks, "the head was not run in blocks"
    written = load_trace(tmp_path / "trace.safetensors")
    assert sorted(written.names) == sorted(held.names)
    for name in held.names:
        np.testing.assert_allclose(written[name], held[name], rtol=1e-12, atol=1e-13, err_msg=name)


def test_a_head_that_is_not_what_it_seems_is_run_whole(small_blocks, tmp_path, monkeypatch):
    """A model that changes its logits after the head in a way parity does not know: the last row differs from
    the model's own, and the capture runs again whole (the same trace as held)."""
    from parity.capture.hf.model import load_model
    from parity.core.trace import load_trace

    model = load_model(tiny_models.save("llama", tmp_path / "llama"), dtype="float64")
    import functools

    original = type(model.model).forward

    @functools.wraps(original)
    def doubled(self, *args, **kwargs):
        output = original(self, *args, **kwargs)
        output.logits = output.logits * 2
        return output

    monkeypatch.setattr(type(model.model), "forward", doubled)
    held = model.capture(TOKENS)
    model.capture_to_file(TOKENS, tmp_path / "trace.safetensors")
    assert small_blocks
    written = load_trace(tmp_path / "trace.safetensors")
    np.testing.assert_allclose(written["logits"], held["logits"], rtol=1e-12)


def test_a_far_position_capture_keeps_its_positions_with_the_head_in_blocks(small_blocks, tmp_path):
    """--start-position: the positioned forward takes logits_to_keep as well."""
    from parity.capture.hf.model import load_model
    from parity.core.trace import load_trace

    model = load_model(tiny_models.save("llama", tmp_path / "llama"), dtype="float64")
    held = model.capture(TOKENS, start_position=50)
    model.capture_to_file(TOKENS, tmp_path / "trace.safetensors", start_position=50)
    assert small_blocks
    written = load_trace(tmp_path / "trace.safetensors")
    for name in held.names:
        np.testing.assert_allclose(written[name], held[name], rtol=1e-12, atol=1e-13, err_msg=name)
