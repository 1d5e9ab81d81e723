"""parity check --gradients: a port's backward against transformers', on a tiny Llama."""

import subprocess
import sys

import pytest

pytest.importorskip("transformers")

from conftest import ROOT, TOKENS  # noqa: E402

FACTORIES = '''
import sys
import torch
sys.path.insert(0, {examples!r})
from llama_port import build


class WrongSilu(torch.autograd.Function):
    """silu's forward; a backward that forgets the product rule's second term."""

    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return torch.nn.functional.silu(x)

    @staticmethod
    def backward(ctx, grad):
        (x,) = ctx.saved_tensors
        return grad * torch.sigmoid(x)


def detached(path):
    port = build(path)
    down = port.blocks[1].mlp.down_proj
    down.forward = lambda x: torch.nn.functional.linear(x, down.weight.detach())
    return port


def wrong_backward(path):
    port = build(path)
    mlp = port.blocks[1].mlp
    mlp.forward = lambda x: mlp.down_proj(WrongSilu.apply(mlp.gate_proj(x)) * mlp.up_proj(x))
    return port
'''


@pytest.fixture(scope="module")
def factories(tmp_path_factory):
    path = tmp_path_factory.mktemp("gradients") / "factories.py"
    path.write_text(FACTORIES.format(examples=str(ROOT / "examples")))
    return path


def gradients(model, candidate):
    from parity.commands.gradients import run_gradients

    class Quiet:
        def step(self, message):
            pass

    return run_gradients(str(model), candidate, TOKENS, None, None, Quiet())


def test_a_correct_port_has_the_references_gradients(model_dirs):
    comparison = gradients(model_dirs["llama"], f"{ROOT / 'examples' / 'llama_port.py'}:build")
    assert comparison, comparison
    names = [result.name for result in comparison.checkpoints]
    assert names[0] == "logits" and names[-1] == "embed"          # backward order
    assert "layers.2.mlp_up.weight" in [result.name for result in comparison.parameters]
    assert comparison.loss_candidate == pytest.approx(comparison.loss_reference, rel=1e-5)


def test_a_detached_weight_is_named(model_dirs, factories):
    comparison = gradients(model_dirs["llama"], f"{factories}:detached")
    assert not comparison and comparison.without_gradient == ("blocks.1.mlp.down_proj.weight",)
    assert all(comparison.checkpoints)                            # the gradient still flows past it


def test_a_wrong_backward_is_found_where_it_starts(model_dirs, factories):
    comparison = gradients(model_dirs["llama"], f"{factories}:wrong_backward")
    assert not comparison and not comparison.without_gradient
    assert comparison.first_divergence.name == "layers.1.mlp_gate"
    assert comparison.to_dict()["first_divergence"] == "layers.1.mlp_gate"
    passed = [result.name for result in comparison.checkpoints if result.passed]
    assert "layers.1.mlp_act" in passed and "layers.2.out" in passed  # upstream of the op, in backward order


@pytest.mark.slow
def test_the_cli_reports_the_first_divergence_and_exits_1(model_dirs, factories):
    result = subprocess.run([sys.executable, "-m", "parity", "check", str(model_dirs["llama"]),
                             f"{factories}:wrong_backward", "--tokens", ",".join(map(str, TOKENS)), "--gradients"],
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 1, result.stderr
    assert "first divergence in backward order: layers.1.mlp_gate" in result.stdout
