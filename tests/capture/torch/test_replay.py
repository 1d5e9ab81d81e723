"""Replay: each block and op of a PyTorch candidate rerun on the reference's inputs."""

import pytest

torch = pytest.importorskip("torch")

import llama_port  # noqa: E402
from conftest import TOKENS  # noqa: E402
from parity.capture.torch.replay import _module_inputs, replay_module  # noqa: E402
from parity.capture.torch.module import input_ids_of, trace_module
from parity.core.compare import compare  # noqa: E402


def local_errors(replayed, reference):
    return {r.name: r.metrics.rel_l2 for r in compare(reference, replayed).checkpoints if r.metrics is not None}


def test_module_inputs_are_identified_by_value(model_dirs):
    port = llama_port.build(model_dirs["llama"])
    feeds = _module_inputs(port, input_ids_of(TOKENS, port), port.parity_taps, None)
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
