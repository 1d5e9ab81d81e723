"""A port that computes attention a block of query rows at a time hands each block to its Probe with `start`:
the trace holds what the same port computing it whole records, a long check measures each block as it comes,
and a probe given the rows in part says which are missing."""

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from parity.capture.torch.module import trace_module  # noqa: E402
from parity.capture.torch.probe import Probe  # noqa: E402
from parity.core.errors import CaptureError  # noqa: E402
from parity.core.metrics import NORMS_ONLY  # noqa: E402
from parity.core.results import PASS  # noqa: E402
from parity.core.streamed import StreamedCheckpoints  # noqa: E402

TOKENS = list(range(11))
TAPS = {"embed": "embed", "probs": "layers.0.attn_probs", "out": "layers.0.attn_out"}


class BlockedAttention(torch.nn.Module):
    """One causal attention layer, its scores (B, H, rows, T) made `rows` query rows at a time; `given` chooses
    which blocks reach the probe, and how (`start=` or positionally)."""

    def __init__(self, rows=None, positional=False, skip=()):
        super().__init__()
        torch.manual_seed(0)
        self.embed, self.heads, self.rows = torch.nn.Embedding(16, 8), 2, rows
        self.qk, self.out = torch.nn.Linear(8, 16), torch.nn.Linear(8, 8)
        self.probs, self.positional, self.skip = Probe(), positional, set(skip)

    def forward(self, ids):
        x = self.embed(ids)                                                       # (B, T, 8)
        B, T, _ = x.shape
        q, k = self.qk(x).view(B, T, 2, self.heads, 4).permute(2, 0, 3, 1, 4)     # each (B, H, T, 4)
        v = x.view(B, T, self.heads, 4).transpose(1, 2)
        rows, blocks = self.rows or T, []
        for start in range(0, T, rows):
            scores = q[:, :, start:start + rows] @ k.transpose(-1, -2)            # (B, H, rows, T)
            future = torch.arange(T)[None, :] > torch.arange(start, start + scores.shape[2])[:, None]
            probs = scores.masked_fill(future, float("-inf")).softmax(-1)
            if self.rows is None:
                probs = self.probs(probs)
            elif start not in self.skip:
                probs = self.probs(probs, start) if self.positional else self.probs(probs, start=start)
            blocks.append(probs @ v)
        return self.out(torch.cat(blocks, dim=2).transpose(1, 2).reshape(B, T, -1))


@pytest.mark.parametrize("rows, positional", [(3, False), (4, True), (11, False), (20, False)])
def test_blocks_given_to_a_probe_are_recorded_as_the_whole_tensor(rows, positional):
    whole = trace_module(BlockedAttention(), TOKENS, taps=TAPS)
    blocked = trace_module(BlockedAttention(rows, positional), TOKENS, taps=TAPS)
    assert blocked["layers.0.attn_probs"].shape == (2, 11, 11)
    np.testing.assert_allclose(blocked["layers.0.attn_probs"], whole["layers.0.attn_probs"], rtol=0, atol=1e-6)


def test_blocks_written_to_a_trace_file_as_the_forward_runs_are_the_whole_tensor(tmp_path):
    from parity.capture.torch.streaming import stream_module
    from parity.core.trace import load_trace
    from parity.core.trace.writer import trace_file

    whole = trace_module(BlockedAttention(), TOKENS, taps=TAPS)
    with trace_file(tmp_path / "t.safetensors") as writer:
        stream_module(BlockedAttention(rows=3), TOKENS, writer, taps=TAPS)
    written = load_trace(tmp_path / "t.safetensors")
    np.testing.assert_allclose(written["layers.0.attn_probs"], whole["layers.0.attn_probs"], rtol=0, atol=1e-6)


class HeldRows:
    """The reference's rows from a tensor in memory, and which rows were asked for."""

    def __init__(self, name, tensor):
        self.tensor, self.names, self.asked = tensor, frozenset({name}), []

    def shape(self, name):
        return self.tensor.shape

    def rows(self, name, start, stop):
        self.asked.append((start, stop))
        return self.tensor[:, start:stop]

    def rows_per_block(self, name):
        return 100


def test_in_a_streamed_check_each_block_is_measured_as_it_comes_and_never_held():
    name = "layers.0.attn_probs"
    reference = np.asarray(trace_module(BlockedAttention(), TOKENS, taps=TAPS)[name], dtype=np.float64)
    stream = StreamedCheckpoints(HeldRows(name, reference), lambda _: NORMS_ONLY)
    trace = trace_module(BlockedAttention(rows=4), TOKENS, taps=TAPS, stream=stream)
    assert name not in trace
    assert stream.reference.asked == [(0, 4), (4, 8), (8, 11)]
    result, per_position = stream.results()[name]
    assert result.status == PASS and per_position.shape == (11,)


def test_a_probe_given_the_rows_in_part_names_the_first_missing_row():
    with pytest.raises(CaptureError, match=r"layers\.0\.attn_probs: its probe was given 7 of 11 rows, none from "
                                           r"row 4; call it once per block of query rows with start="):
        trace_module(BlockedAttention(rows=4, skip={4}), TOKENS, taps=TAPS)
