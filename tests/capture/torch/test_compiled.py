"""Modules compiled by torch.compile: taken as their module compiled in place; their checkpoints kept inside the
graph and recorded after the forward; the graph guarded on parity's hooks. Compiled with dynamo's "eager"
backend here (what dynamo does with hooks does not depend on the backend; inductor runs in
tests/integration/test_compiled_ports.py)."""

import inspect

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from parity.capture.torch.candidate import TorchCandidate  # noqa: E402
from parity.capture.torch.compiled import compiled_in_place, compiled_within, recompiles_allowed  # noqa: E402
from parity.capture.torch.module import trace_module  # noqa: E402
from parity.capture.torch.probe import Probe  # noqa: E402


class Block(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.up = torch.nn.Linear(6, 6)
        self.rows = Probe()

    def forward(self, x):
        h = self.up(x)
        out = x + h
        h.mul_(0)                           # the block changes its projection in place once it is used
        for start in range(0, x.shape[1], 2):  # handed to a probe two rows at a time
            self.rows(out[:, start:start + 2], start=start)
        return out


class Tiny(torch.nn.Module):
    parity_taps = {"emb": "embed", "blocks.{i}.up": "layers.{i}.mlp_out", "blocks.{i}.rows": "layers.{i}.out"}

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.emb = torch.nn.Embedding(10, 6)
        self.blocks = torch.nn.ModuleList([Block(), Block()])
        self.head = torch.nn.Linear(6, 10)

    def forward(self, ids, attention_mask=None):
        x = self.emb(ids)
        for block in self.blocks:
            x = block(x)
        return self.head(x)


TOKENS = [1, 2, 3, 4, 5]


def eager_trace():
    return trace_module(Tiny(), TOKENS, taps=Tiny.parity_taps)


def test_torch_compile_s_wrapper_is_taken_as_its_module_compiled_in_place():
    model = Tiny()
    module = compiled_in_place(torch.compile(model, backend="eager"))
    assert module is model and module._compiled_call_impl is not None and compiled_within(module)
    assert "attention_mask" in inspect.signature(module.forward).parameters
    assert [name for name, _ in module.named_modules()][1] == "emb"
    plain = Tiny()
    assert compiled_in_place(plain) is plain and not compiled_within(plain)


def test_a_module_with_compiled_blocks_or_a_compiled_forward_is_compiled_within():
    model = Tiny()
    model.blocks[1].compile(backend="eager")
    assert compiled_within(model)
    other = Tiny()
    other.forward = torch.compile(other.forward, backend="eager")
    assert compiled_within(other)


def test_a_fullgraph_module_records_what_its_eager_run_records():
    candidate = TorchCandidate("tiny", torch.compile(Tiny(), backend="eager", fullgraph=True))
    try:
        compiled = trace_module(candidate.module, TOKENS, taps=Tiny.parity_taps)
    finally:
        candidate.close()
    eager = eager_trace()
    assert compiled.names == eager.names and len(compiled.names) == 6
    for name in eager.names:   # kept as the hook saw it (mlp_out before the block zeroes it), rows whole
        np.testing.assert_allclose(compiled[name], eager[name], rtol=1e-6, atol=1e-6)
    assert np.abs(compiled["layers.0.mlp_out"]).max() > 0
    assert compiled.metadata["compiled"] == "compiled by torch.compile"


def test_a_hooked_pass_after_a_plain_call_at_the_same_shape_records_every_checkpoint():
    # dynamo does not guard a graph on hooks added after it was compiled, unless told to: the graph of the
    # plain call ran with the hooks in place and recorded nothing but the logits
    candidate = TorchCandidate("tiny", torch.compile(Tiny(), backend="eager", fullgraph=True))
    try:
        with torch.no_grad():
            candidate.module(torch.tensor([TOKENS]))
        assert len(trace_module(candidate.module, TOKENS, taps=Tiny.parity_taps).names) == 6
    finally:
        candidate.close()


def test_recompiles_are_allowed_past_torch_s_limit_while_parity_drives_the_module():
    import torch._dynamo

    config = torch._dynamo.config
    name = "recompile_limit" if hasattr(config, "recompile_limit") else "cache_size_limit"
    before = getattr(config, name)
    with recompiles_allowed():
        assert getattr(config, name) >= 64 and config.skip_nnmodule_hook_guards is False
    assert getattr(config, name) == before


def test_a_forward_compiled_on_the_instance_records_every_checkpoint():
    # transformers' documented recipe: model.forward = torch.compile(model.forward, ...)
    model = Tiny()
    model.forward = torch.compile(model.forward, backend="eager", fullgraph=True)
    candidate = TorchCandidate("tiny", model)
    try:
        compiled = trace_module(candidate.module, TOKENS, taps=Tiny.parity_taps)
    finally:
        candidate.close()
    assert compiled.names == eager_trace().names


def test_trace_module_takes_a_compiled_module_and_says_when_a_graph_compiled_before_its_hooks_runs():
    import torch._dynamo

    from parity.core.errors import CaptureError

    torch._dynamo.reset()
    compiled = torch.compile(Tiny(), backend="eager", fullgraph=True)
    assert len(trace_module(compiled, TOKENS, taps=Tiny.parity_taps).names) == 6   # the wrapper, taken as is
    stale = torch.compile(Tiny(), backend="eager", fullgraph=True)
    with torch.no_grad():
        stale(torch.tensor([TOKENS]))    # compiled by the user before parity's hooks, unguarded on them
    with pytest.raises(CaptureError, match=r"torch._dynamo.reset\(\)"):
        trace_module(stale, TOKENS, taps=Tiny.parity_taps)
    torch._dynamo.reset()
    assert len(trace_module(stale, TOKENS, taps=Tiny.parity_taps).names) == 6
