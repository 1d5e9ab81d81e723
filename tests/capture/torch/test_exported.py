"""Programs made by torch.export, traced through the module calls their graph records (capture/torch/exported/).

Before: an ExportedProgram was refused ("returned ExportedProgram, not a torch.nn.Module"), and its `.module()`
recorded the logits alone (its submodules hold parameters and are never called) or ended in a traceback
(`eval()` is not supported on it)."""

import pytest
import torch
from torch import nn

from parity.capture.torch.exported import exported_module, is_exported
from parity.capture.torch.exported.calls import module_calls
from parity.capture.torch.module import trace_module
from parity.capture.torch.probe import Probe
from parity.core.errors import CaptureError

TOKENS = [3, 1, 4, 1, 5, 9, 2, 6]


class Norm(nn.Module):
    def __init__(self):
        super().__init__()
        self.weight = nn.Parameter(torch.rand(16) + 0.5)

    def forward(self, x):
        x32 = x.to(torch.float32)        # a cast of float32 is its input: the residual may be read from it
        return self.weight * (x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + 1e-5)).to(x.dtype)


class Block(nn.Module):
    def __init__(self):
        super().__init__()
        self.norm, self.up, self.down, self.seen = Norm(), nn.Linear(16, 32), nn.Linear(32, 16), Probe()

    def forward(self, x):
        hidden = self.seen(torch.relu(self.up(self.norm(x))))
        return x + self.down(hidden), (hidden[..., :4], hidden[..., 4:8])   # a block returning a cache beside x


class Router(nn.Module):
    def __init__(self):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(4, 16))

    def forward(self, x):
        logits = nn.functional.linear(x.reshape(-1, 16), self.weight)                 # (T, E)
        weights, ids = torch.topk(logits.softmax(-1), 2, dim=-1)
        return logits, weights / weights.sum(-1, keepdim=True), ids


class Tiny(nn.Module):
    parity_taps = {"tok": "embed", "blocks.{i}.norm": "layers.{i}.attn_norm", "blocks.{i}.up": "layers.{i}.mlp_up",
                   "blocks.{i}.seen": "layers.{i}.mlp_act", "blocks.{i}": "layers.{i}.out",
                   "router:router": ("layers.0.moe_router_logits", "layers.0.moe_experts", "layers.0.moe_weights"),
                   "head": "logits"}

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.tok, self.blocks = nn.Embedding(32, 16), nn.ModuleList([Block(), Block()])
        self.router, self.head = Router(), nn.Linear(16, 32)

    def forward(self, ids):
        x = self.tok(ids)
        for block in self.blocks:
            x, _ = block(x)
        _, weights, chosen = self.router(x)
        return self.head(x) + 0 * weights.sum() + 0 * chosen.sum()


def _ids(tokens=TOKENS):
    return torch.tensor([tokens])


def _dynamic(model, **options):
    return torch.export.export(model, (_ids(),), dynamic_shapes=({1: torch.export.Dim("T", min=2, max=64)},),
                               **options)


def test_a_program_and_its_module_record_what_the_module_records():
    model = Tiny().eval()
    eager = trace_module(model, TOKENS, taps=Tiny.parity_taps)
    program = _dynamic(model)
    assert is_exported(program) and is_exported(program.module()) and not is_exported(model)
    for exported in (program, program.module()):
        traced = trace_module(exported, TOKENS, taps=Tiny.parity_taps)
        assert traced.names == eager.names     # the module alone recorded the logits and nothing else
        for name in eager.names:
            assert torch.equal(torch.as_tensor(traced[name]), torch.as_tensor(eager[name])), name


def test_a_module_call_hands_out_what_it_computes_not_its_input_cast():
    calls = {call.path: call for call in module_calls(_dynamic(Tiny().eval()).module().graph)}
    norm = calls["blocks.0.norm"]
    assert [node.name for node in norm.outputs] == [norm.last.name]    # not the float32 cast of its input
    assert calls["blocks.0.seen"].outputs                              # a Probe's view of its value
    assert calls["blocks.0"].outputs[0] is calls["blocks.1"].inputs[0]  # the hidden state before the cache
    router = calls["router"]
    assert router.outputs[0].target == torch.ops.aten.linear.default   # its logits, though nothing reads them
    assert router.outputs[-1].meta["val"].dtype == torch.int64          # the ids last, as it returns them


def test_the_rebuilt_tree_holds_the_programs_parameters_at_their_paths():
    model = Tiny().eval()
    module = exported_module(_dynamic(model))
    assert isinstance(module.blocks, nn.ModuleList) and isinstance(module.blocks[0].up, nn.Linear)
    assert module.blocks[0].up.out_features == 32 and module.tok.num_embeddings == 32
    assert dict(module.named_parameters()).keys() == dict(model.named_parameters()).keys()
    assert module.exported_from.endswith("Tiny") and not module.rotates
    with pytest.raises(CaptureError, match="runs only within the program's graph"):
        module.blocks[0].up(torch.zeros(1, 16))


def test_where_the_checkpoints_live_is_carried_from_the_program():
    program = _dynamic(Tiny().eval())
    program.parity_taps = {"blocks.{i}": "layers.{i}.out"}
    assert exported_module(program).parity_taps == {"blocks.{i}": "layers.{i}.out"}


def test_a_program_exported_for_one_length_refuses_others_in_one_line():
    program = torch.export.export(Tiny().eval(), (_ids(),))
    module = exported_module(program)
    assert module.exported_shape() == (1, len(TOKENS))
    assert "exported for 8 tokens only" in module.refuses("logits")
    assert "batch of 1" in module.refuses("padding")
    with pytest.raises(CaptureError, match=r"takes ids of shape \(1, 8\) and was given \(1, 5\)"):
        module(_ids(TOKENS[:5]))
    dynamic = exported_module(_dynamic(Tiny().eval()))
    assert dynamic.exported_shape() == (1, None) and dynamic.refuses("logits") is None
    with pytest.raises(CaptureError, match="refuses these inputs"):    # past the range it was exported for
        dynamic(_ids(list(range(30)) * 3))


def test_a_transformers_models_attention_is_read_off_its_graph():
    """q and k after RoPE from scaled_dot_product_attention's query and key (the key before GQA's expansion),
    and from eager attention's scores, with its probabilities, as transformers' own attention call gives them."""
    pytest.importorskip("transformers")
    import tiny_models

    for implementation, names, dtype in (("sdpa", {"q_rope", "k_rope"}, torch.float32),
                                         ("eager", {"q_rope", "k_rope", "attn_probs"}, torch.float32),
                                         ("eager", {"attn_probs"}, torch.bfloat16)):   # cast back as it uses them
        model = tiny_models.build("llama").to(dtype)
        model.set_attn_implementation(implementation)
        eager = trace_module(model, TOKENS)
        program = torch.export.export(model, (_ids(),), kwargs={"use_cache": False})
        ops = {str(node.target) for node in program.graph.nodes}
        assert ("aten.scaled_dot_product_attention.default" in ops) == (implementation == "sdpa")
        traced = trace_module(program, TOKENS)
        read = {name for name in traced.names if name.startswith("layers.0.")}
        assert {f"layers.0.{name}" for name in names} <= read, implementation
        for name in traced.names:
            assert torch.allclose(torch.as_tensor(traced[name]), torch.as_tensor(eager[name]), atol=1e-6), name
    model = tiny_models.build("llama")
    eager = trace_module(model, TOKENS)
    program = torch.export.export(model, (_ids(),), kwargs={"use_cache": False})
    from parity.testing import assert_parity

    assert assert_parity(eager, program, atol=1e-5, rtol=1e-4).passed    # was: "not ExportedProgram"


def test_converting_the_module_converts_what_its_graph_reads():
    """The tree and the program hold the same tensors after `.to()`; the graph itself asserts the dtype it was
    exported at, so a program runs only at that dtype (and on that device)."""
    module = exported_module(_dynamic(Tiny().eval()))
    module.double()
    assert module.blocks[0].up.weight.dtype == torch.float64
    assert module.program.get_submodule("blocks.0.up").weight is module.blocks[0].up.weight
    with pytest.raises(RuntimeError, match="dtype mismatch"):
        module(_ids())


class RowBlocked(nn.Module):
    """Attention probabilities made a block of query rows at a time, each block handed to a Probe with its
    first row (what a port does at long context)."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.tok, self.query, self.probs = nn.Embedding(32, 16), nn.Linear(16, 16), Probe()

    def forward(self, ids):
        x = self.tok(ids)                                                          # (1, T, 16)
        scores = (self.query(x) @ x.transpose(-1, -2)).unsqueeze(1)               # (1, 1, T, T)
        blocks = [self.probs(scores[:, :, start:start + 3].softmax(-1), start=start)
                  for start in range(0, ids.shape[1], 3)]
        return torch.cat(blocks, dim=2).sum(1) @ x


def test_a_probe_given_row_blocks_is_placed_by_the_blocks_sizes():
    """The graph keeps no `start`: before, each block's call overwrote the last (a [1, 1, 2, 8] block
    compared with the [1, 1, 8, 8] whole, a false failure)."""
    model = RowBlocked().eval()
    taps = {"probs": "layers.0.attn_probs", "tok": "embed"}
    eager = trace_module(model, TOKENS, taps=taps)
    traced = trace_module(torch.export.export(model, (_ids(),)), TOKENS, taps=taps)
    assert traced.names == eager.names
    assert torch.equal(torch.as_tensor(traced["layers.0.attn_probs"]), torch.as_tensor(eager["layers.0.attn_probs"]))


def test_a_call_nothing_listens_to_runs_the_programs_own_code():
    model = Tiny().eval()
    program = _dynamic(model)
    module = exported_module(program)
    plain = module(_ids())
    assert torch.equal(plain, program.module()(_ids()))
    handle = module.blocks[0].up.register_forward_hook(lambda *_: None)
    assert module._observed() and torch.equal(module(_ids()), plain)     # run node by node: the same values
    handle.remove()
    assert not module._observed()
