"""Capture straight to disk: the file holds what an in-memory capture holds, whatever the timing."""

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from parity.capture.torch import streaming  # noqa: E402
from parity.capture.torch.streaming import stream_module  # noqa: E402
from parity.capture.torch.module import trace_module
from parity.core.trace import load_trace  # noqa: E402
from parity.core.trace.writer import trace_file  # noqa: E402

from conftest import TOKENS  # noqa: E402


@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_a_model_captured_into_a_file_holds_what_an_in_memory_capture_holds(model_dirs, tmp_path, family,
                                                                             monkeypatch):
    from parity.capture.hf.model import load_model

    monkeypatch.setattr(streaming, "MAX_QUEUED_BYTES", 4096)  # the forward waits for the disk at every step
    model = load_model(model_dirs[family])
    in_memory = model.capture(TOKENS, prompt="a b c", weights=True)
    names = model.capture_to_file(TOKENS, tmp_path / "t.safetensors", prompt="a b c", weights=True)
    streamed = load_trace(tmp_path / "t.safetensors")
    assert sorted(names) == sorted(in_memory.names) == sorted(streamed.names)
    assert streamed.metadata == {**in_memory.metadata, "format": streamed.metadata["format"]}
    for name in in_memory.names:
        np.testing.assert_array_equal(streamed[name], in_memory[name], err_msg=name)
        assert streamed.dtype_of(name) == in_memory.dtype_of(name)


class ChangesInPlace(torch.nn.Module):
    """A forward that scales a recorded tensor in place after its hook has seen it."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.embed = torch.nn.Embedding(10, 64)
        self.norm = torch.nn.LayerNorm(64)
        self.head = torch.nn.Linear(64, 10)
        self.seen = []

    def forward(self, ids):
        hidden = self.norm(self.embed(ids))
        self.seen.append(hidden.detach().clone())
        hidden.mul_(3.0)
        return self.head(hidden)


def test_a_tensor_changed_in_place_is_written_as_it_was_recorded(tmp_path):
    model = ChangesInPlace()
    path = tmp_path / "t.safetensors"
    with trace_file(path) as writer:
        stream_module(model, [1, 2, 3] * 50, writer, taps={"norm": "layers.0.attn_norm", "embed": "embed"})
    expected = trace_module(ChangesInPlace(), [1, 2, 3] * 50, taps={"norm": "layers.0.attn_norm", "embed": "embed"})
    np.testing.assert_array_equal(load_trace(path)["layers.0.attn_norm"], model.seen[-1][0].numpy())
    np.testing.assert_array_equal(load_trace(path)["layers.0.attn_norm"], expected["layers.0.attn_norm"])


def test_a_forward_that_fails_leaves_no_file(tmp_path):
    class Fails(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.embed = torch.nn.Embedding(10, 4)

        def forward(self, ids):
            self.embed(ids)
            raise ValueError("shape mismatch in the port")

    from parity.core.errors import CaptureError

    with pytest.raises(CaptureError, match="shape mismatch in the port"):
        with trace_file(tmp_path / "t.safetensors") as writer:
            stream_module(Fails(), [1, 2], writer, taps={"embed": "embed"})
    assert list(tmp_path.iterdir()) == []


def test_the_streamer_names_a_tensor_changed_before_it_was_written(tmp_path):
    import threading

    class Gate:  # stands for a device's copy event: the writer waits on it before reading the tensor
        def __init__(self):
            self.open = threading.Event()

        def synchronize(self):
            self.open.wait(timeout=30)

    gate = Gate()
    with trace_file(tmp_path / "t.safetensors") as writer:
        streamer = streaming.TraceStreamer(writer)
        kept, changed = torch.ones(4, 8), torch.ones(4, 8)
        streamer.put("layers.0.out", kept, owned=False, ready=gate)
        streamer.put("layers.1.out", changed, owned=False)
        changed.mul_(2.0)  # before the writer, held at the gate, reaches it
        gate.open.set()
        assert streamer.close() == ["layers.1.out"]
        assert "layers.0.out" in streamer and "layers.1.out" in streamer
        writer.finish({})


def test_a_port_candidate_asked_to_spill_writes_its_trace_as_it_runs_and_reads_it_back_lazily(model_dirs, tmp_path):
    """A long check hands a port candidate a spill file: the trace is written there as the forward makes it (not
    held whole) and read back a tensor at a time, the tensors the in-memory trace holds."""
    import sys

    from conftest import ROOT
    from parity.capture.candidate import TraceRequest
    from parity.capture.torch.candidate import TorchCandidate

    sys.path.insert(0, str(ROOT / "examples"))
    import scratch_llama

    candidate = TorchCandidate("scratch", scratch_llama.row_blocked(model_dirs["llama"], rows=4))
    held = candidate.trace(TOKENS)
    path = tmp_path / "candidate.safetensors"
    spilled = candidate.trace(TOKENS, TraceRequest(spill_to=str(path)))
    assert path.exists() and not isinstance(spilled.tensors, dict)
    assert sorted(spilled.names) == sorted(held.names) and "layers.0.attn_probs" in spilled.names
    assert spilled.tokens == held.tokens
    for name in held.names:
        np.testing.assert_array_equal(spilled[name], held[name], err_msg=name)
