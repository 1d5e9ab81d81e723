"""Replay: each block and op of a PyTorch candidate rerun on the reference's inputs."""

import pytest

torch = pytest.importorskip("torch")

import llama_port  # noqa: E402
import meta_llama  # noqa: E402
from conftest import TOKENS  # noqa: E402
from parity.capture.torch.replay import _module_inputs, replay_module  # noqa: E402
from parity.capture.torch.module import input_ids_of, trace_module
from parity.core.compare import compare  # noqa: E402
from parity.capture.torch.positions import positions_filled  # noqa: E402
from parity.core.conventions import adapt  # noqa: E402


def local_errors(replayed, reference):
    return {r.name: r.metrics.rel_l2 for r in compare(reference, replayed).checkpoints if r.metrics is not None}


def test_module_inputs_are_identified_by_value(model_dirs):
    port = llama_port.build(model_dirs["llama"])
    feeds, recorded = _module_inputs(port, input_ids_of(TOKENS, port), port.parity_taps, None)
    assert {"embed", "layers.0.out", "layers.0.attn_ctx"} <= set(recorded)
    assert feeds["blocks.1"] == "layers.0.out"
    assert feeds["blocks.0"] == "embed"
    assert feeds["blocks.0.attn.o_proj"] == "layers.0.attn_ctx"
    assert feeds["blocks.0.mlp"] == "layers.0.mlp_norm"
    assert feeds["final_norm"] == "layers.2.out"


def test_a_layer_that_only_inherits_an_error_has_no_local_error(model_dirs, reference_traces):
    reference = reference_traces["llama"]
    port = llama_port.build(model_dirs["llama"], llama_port.Bugs(missing_residual_layer=1))
    replay = replay_module(port, reference, taps=port.parity_taps)
    blocks = local_errors(replay.blocks, reference)
    normal_run = trace_module(port, TOKENS, taps=port.parity_taps)
    propagated = {r.name: r.metrics.rel_l2 for r in compare(reference, normal_run).checkpoints}
    assert blocks["layers.1.out"] > 0.1                  # the layer with the bug
    assert blocks["layers.2.out"] < 1e-5 < propagated["layers.2.out"]  # diverges only by inheritance
    ops = local_errors(replay.ops, reference)
    assert ops["layers.1.resid_mid"] > 0.1               # the inline residual add is where it happens
    assert ops["layers.1.mlp_out"] < 1e-5 and ops["layers.2.attn_norm"] < 1e-5


def test_a_correct_port_has_no_local_error_anywhere(model_dirs, reference_traces):
    port = llama_port.build(model_dirs["qwen3"])
    replay = replay_module(port, reference_traces["qwen3"], taps=port.parity_taps)
    assert max(local_errors(replay.ops, reference_traces["qwen3"]).values()) < 1e-5
    assert not any(module._forward_hooks or module._forward_pre_hooks for module in port.modules())


class Rotary(torch.nn.Module):
    """Meta's RoPE (pairs (2i, 2i+1)) called through a module of its own, as ports that wrap it write it."""

    def forward(self, xq, xk, freqs_cis):
        return meta_llama.apply_rotary_emb(xq, xk, freqs_cis)


class RotaryAttention(meta_llama.Attention):
    def forward(self, x, start_pos, freqs_cis, mask):                 # Meta's, without its cache
        B, T, _ = x.shape
        xq = self.wq(x).view(B, T, self.n_heads, self.head_dim)
        xk = self.wk(x).view(B, T, self.n_kv_heads, self.head_dim)
        xv = self.wv(x).view(B, T, self.n_kv_heads, self.head_dim)
        xq, xk = self.rotary(xq, xk, freqs_cis)                        # (B, T, H, hd), in pair order
        group = self.n_heads // self.n_kv_heads
        keys, values = (t.repeat_interleave(group, dim=2).transpose(1, 2) for t in (xk, xv))
        out = torch.nn.functional.scaled_dot_product_attention(xq.transpose(1, 2), keys, values, is_causal=True)
        return self.wo(out.transpose(1, 2).reshape(B, T, -1))


def test_a_port_in_the_interleaved_rope_layout_is_fed_and_read_in_its_own_order(model_dirs, reference_traces):
    reference = reference_traces["llama"]
    port = meta_llama.build(model_dirs["llama"])
    for layer in port.layers:
        layer.attention.__class__, layer.attention.rotary = RotaryAttention, Rotary()
    taps = {**meta_llama.TAPS, "layers.{i}.attention.rotary": "layers.{i}.q_rope"}
    with positions_filled(port):                                       # start_pos=0, as a check gives it
        replay = replay_module(port, reference, taps=taps)
        feeds, _ = _module_inputs(port, input_ids_of(TOKENS, port), taps, None)
    assert feeds["layers.0.attention.rotary"] == "layers.0.q"          # its input: q, kept in pairs
    adapted, adaptations = adapt(reference, replay.ops)
    assert [a.convention for a in adaptations] == ["rope_pairs"]
    ops = local_errors(adapted, reference)
    assert ops["layers.0.q"] < 1e-5 and ops["layers.1.q_rope"] < 1e-5   # RoPE given the reference's q in pairs
    assert max(ops.values()) < 1e-5
