import numpy as np
import pytest

torch = pytest.importorskip("torch")

from parity.capture.torch.probe import Probe  # noqa: E402
from parity.capture.torch.module import trace_module
from parity.capture.torch.taps import resolve_taps
from parity.capture.torch.tracer import ModuleTracer
from parity.core.errors import CaptureError, OptionError  # noqa: E402
from parity.core.names import FAMILY_TAPS, Tap  # noqa: E402


class Block(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.norm = torch.nn.LayerNorm(6)
        self.qkv = torch.nn.Linear(6, 18)
        self.rope_q = Probe()
        self.proj = torch.nn.Linear(6, 6)

    def forward(self, x):
        q, k, v = self.qkv(self.norm(x)).chunk(3, dim=-1)
        return x + self.proj(self.rope_q(q * 2) + k + v)


class Tiny(torch.nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.emb = torch.nn.Embedding(10, 6)
        self.blocks = torch.nn.ModuleList([Block(), Block()])
        self.head = torch.nn.Linear(6, 10)

    def forward(self, ids):
        x = self.emb(ids)
        for block in self.blocks:
            x = block(x)
        return (self.head(x), "other outputs")


TAPS = {
    "emb": "embed",
    "blocks.{i}.norm": "layers.{i}.attn_norm",
    "blocks.{i}.qkv": ["layers.{i}.q", "layers.{i}.k", "layers.{i}.v"],
    "re:blocks\\.(?P<i>\\d+)\\.rope_q": "layers.{i}.q_rope",
    "blocks.{i}.proj:input": "layers.{i}.attn_ctx",
    "blocks.*": "final_norm",  # a glob: only the first block to run is kept
}


def test_mapping_forms_split_input_and_regex_taps():
    model = Tiny()
    trace = trace_module(model, [1, 2, 3], taps=TAPS)
    assert trace.tokens == [1, 2, 3]
    with torch.no_grad():
        x = model.emb(torch.tensor([[1, 2, 3]]))
        normed = model.blocks[0].norm(x)
        q, k, v = model.blocks[0].qkv(normed).chunk(3, dim=-1)
    np.testing.assert_array_equal(trace["embed"], x[0].numpy())
    np.testing.assert_array_equal(trace["layers.0.attn_norm"], normed[0].numpy())
    np.testing.assert_array_equal(trace["layers.0.k"], k[0].numpy())
    np.testing.assert_array_equal(trace["layers.0.q_rope"], 2 * q[0].numpy())
    np.testing.assert_array_equal(trace["layers.0.attn_ctx"], (2 * q + k + v)[0].numpy())
    assert "layers.1.q" in trace and trace["logits"].shape == (3, 10)  # logits from the returned tuple


def test_hooks_are_removed_even_when_the_forward_fails():
    model = Tiny()
    with pytest.raises(CaptureError, match="forward pass of Tiny failed"):
        trace_module(model, [1, 2, 99], taps=TAPS)  # 99 is outside the embedding
    assert not any(m._forward_hooks or m._forward_pre_hooks for m in model.modules())
    with ModuleTracer(model, TAPS):
        assert any(m._forward_hooks for m in model.modules())
    assert not any(m._forward_hooks or m._forward_pre_hooks for m in model.modules())


def test_checkpoint_filter_records_only_what_is_asked():
    trace = trace_module(Tiny(), [1, 2], taps=TAPS, checkpoints="layers.1.*")
    assert all(name.startswith("layers.1.") for name in trace.names)


def test_nothing_matched_says_how_to_map_modules():
    with pytest.raises(CaptureError, match="none of its module paths matched"):
        trace_module(Tiny(), [1], taps={"nothing.here": "embed"}, checkpoints="embed")


def test_fused_output_that_cannot_be_split_evenly_is_an_error():
    with pytest.raises(CaptureError, match="split a fused output of width 18 evenly"):
        trace_module(Tiny(), [1], taps={"blocks.{i}.qkv": ["layers.{i}.q", "layers.{i}.k", "layers.{i}.v", "layers.{i}.q_norm"]})


def test_resolve_taps_accepts_names_mappings_taps_and_mixtures():
    assert resolve_taps("nanogpt") == FAMILY_TAPS["nanogpt"]
    mixed = resolve_taps(["nanogpt", {"h.{i}.probs:input": "layers.{i}.attn_probs"}])
    assert mixed[-1] == Tap("h.{i}.probs", ("layers.{i}.attn_probs",), "input")
    assert resolve_taps([Tap("a", ("embed",))]) == (Tap("a", ("embed",)),)
    with pytest.raises(OptionError, match="no built-in mapping named 'mamba'"):
        resolve_taps("mamba")


def test_heads_are_flattened_and_the_batch_axis_dropped():
    class Heads(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.q = Probe()

        def forward(self, ids):
            return self.q(torch.ones(1, ids.shape[1], 3, 4))  # (B, T, H, hd)

    trace = trace_module(Heads(), [1, 2, 3, 4, 5], taps={"q": "layers.0.q"}, checkpoints="layers.*")
    assert trace["layers.0.q"].shape == (5, 12)


def test_weights_of_tapped_modules_are_recorded_on_request():
    model = Tiny()
    trace = trace_module(model, [1, 2], taps=TAPS, weights=True)
    np.testing.assert_array_equal(trace["layers.0.attn_norm.weight"], model.blocks[0].norm.weight.detach().numpy())
    assert "layers.0.attn_norm.bias" in trace and "embed.weight" in trace
    assert "layers.0.attn_norm.weight" not in trace_module(model, [1, 2], taps=TAPS)


def test_a_tensor_the_forward_changes_in_place_after_it_is_recorded_keeps_its_recorded_value():
    import torch

    class InPlace(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.embed = torch.nn.Embedding(10, 4)
            self.norm = torch.nn.LayerNorm(4)
            self.head = torch.nn.Linear(4, 10)

        def forward(self, ids):
            hidden = self.norm(self.embed(ids))
            expected.append(hidden.detach().clone())
            hidden.mul_(3.0)  # after the norm's hook has seen it
            return self.head(hidden)

    expected = []
    trace = trace_module(InPlace(), [1, 2, 3], taps={"norm": "layers.0.attn_norm", "embed": "embed"})
    np.testing.assert_array_equal(trace["layers.0.attn_norm"], expected[-1][0].numpy())


cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


@cuda
def test_a_model_on_a_cuda_device_records_what_it_records_on_the_cpu():
    model = Tiny()
    on_cpu = trace_module(model, [1, 2, 3, 4], taps=TAPS)
    on_gpu = trace_module(Tiny().cuda(), [1, 2, 3, 4], taps=TAPS)
    assert on_gpu.names == on_cpu.names
    for name in on_cpu.names:
        np.testing.assert_allclose(on_gpu[name], on_cpu[name], rtol=1e-4, atol=1e-5, err_msg=name)


@cuda
def test_on_a_cuda_device_a_later_in_place_change_does_not_reach_the_queued_copy():
    class InPlace(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.embed = torch.nn.Embedding(10, 256)
            self.norm = torch.nn.LayerNorm(256)
            self.head = torch.nn.Linear(256, 10)

        def forward(self, ids):
            hidden = self.norm(self.embed(ids))
            expected.append(hidden.detach().cpu())
            for _ in range(50):  # keep the device busy past the queued copy, then change the tensor
                hidden.mul_(1.0001)
            hidden.mul_(3.0)
            return self.head(hidden)

    expected = []
    trace = trace_module(InPlace().cuda(), list(range(10)) * 40, taps={"norm": "layers.0.attn_norm"})
    np.testing.assert_array_equal(trace["layers.0.attn_norm"], expected[-1][0].numpy())


def test_kept_on_the_device_a_checkpoint_is_the_forwards_own_tensor_or_a_copy_there():
    from parity.commands.check.on_device import reference_on_device

    model = Tiny()
    kept = reference_on_device(model, [1, 2, 3, 4], taps=TAPS, checkpoints=None, raw=False, metadata={})
    on_host = trace_module(model, [1, 2, 3, 4], taps=TAPS)
    assert sorted(kept.tensors) == sorted(on_host.names)
    for name in on_host.names:
        assert isinstance(kept[name], torch.Tensor), name
        np.testing.assert_array_equal(kept[name].numpy(), on_host[name], err_msg=name)
    seen = {}

    def keep(_module, _args, output):
        seen["out"] = output

    handle = model.blocks[0].register_forward_hook(keep)   # "blocks.*" taps the first block as final_norm
    try:
        kept = reference_on_device(model, [1, 2, 3, 4], taps=TAPS, checkpoints=None, raw=False, metadata={})
    finally:
        handle.remove()
    assert kept["final_norm"].data_ptr() == seen["out"].data_ptr()  # no copy was made


@cuda
def test_kept_on_a_cuda_device_checkpoints_stay_there_and_measure_as_on_the_host():
    from parity.commands.check.on_device import reference_on_device
    from parity.core.metrics import measure_pair
    from parity.core.results import Tolerance

    on_gpu = reference_on_device(Tiny().cuda(), [1, 2, 3, 4], taps=TAPS, checkpoints=None, raw=False, metadata={})
    on_host = trace_module(Tiny(), [1, 2, 3, 4], taps=TAPS)
    any_error = Tolerance(atol=float("inf"), rtol=0.0, basis="norms")
    for name in on_host.names:
        assert on_gpu[name].device.type == "cuda", name
        assert measure_pair(on_host[name], on_gpu[name], any_error).metrics.rel_l2 < 1e-4, name


def test_a_module_computes_in_the_dtype_holding_most_of_its_parameters():
    # transformers keeps a bfloat16 model's norms, router and gates in float32 (`_keep_in_fp32_modules`):
    # transformers 5.25's Ergo has them before its bfloat16 projections, and was held to float32's noise
    from parity.capture.torch.module import dtype_of

    model = Tiny().to(torch.bfloat16)
    model.emb.float()                              # the first floating-point parameter, kept in float32
    model.blocks[0].norm.float()
    assert next(model.parameters()).dtype == torch.float32
    assert dtype_of(model) == "bfloat16"
    model.parity_dtype = "float32"
    assert dtype_of(model) == "float32"
    assert dtype_of(torch.nn.ReLU()) is None
