"""parity kernel on hand-written kernels: correct ones pass every case, each planted bug is caught and named."""

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

import hand_kernels  # noqa: E402

from parity.kernel import KernelOptions, run_kernel  # noqa: E402
from parity.kernel.ops import OPS  # noqa: E402


@pytest.mark.parametrize("op", sorted(OPS))
def test_a_correct_kernel_passes_every_case_forward_and_backward(op):
    report = run_kernel(op, hand_kernels.CORRECT[op])
    assert len(report.cases) == 5 * 3 * 2
    assert report, [case for case in report.cases if not case][:2]
    assert report.verdict == "passed" and report.pattern is None
    assert all(case.backward["checked"] and case.backward["passed"] for case in report.cases)


TORCH = {"rms_norm": "rms_norm", "layer_norm": "layer_norm", "softmax": "softmax", "silu": "silu", "gelu": "gelu",
         "gelu_tanh": "gelu", "linear": "linear", "embedding": "embedding", "cross_entropy": "cross_entropy",
         "attention": "scaled_dot_product_attention"}


@pytest.mark.parametrize("op", sorted(TORCH))
def test_torchs_own_function_is_called_as_it_expects_and_passes(op):
    import torch

    function = getattr(torch.nn.functional, TORCH[op])
    assert run_kernel(op, function, KernelOptions(lengths=(13, 64), dtypes=("float32", "bfloat16")))


def test_a_tiled_kernel_that_drops_the_tail_fails_at_lengths_off_the_tile():
    report = run_kernel("rms_norm", hand_kernels.rms_norm_tiled)
    assert report.verdict == "failed"
    assert report.pattern == ("fails at T = 1, 13, 127, 257: lengths that are not a multiple of 64; "
                              "the rows past the last full tile of 64 are wrong")
    assert {case.length for case in report.cases if case} == {64}


def test_the_pattern_names_the_tile_for_the_seed_lengths():
    report = run_kernel("rms_norm", hand_kernels.rms_norm_tiled, KernelOptions(lengths=(13, 64, 127, 128, 257),
                                                                          dtypes=("float32",)))
    assert report.pattern.startswith("fails at T = 13, 127, 257: lengths that are not a multiple of 64")


def test_one_wrong_row_fails_at_every_length_and_precision_extreme_inputs_included():
    """One unwritten query row of 257 stays inside a whole-tensor bound set by extreme values in bfloat16;
    each row held to its own noise catches it."""
    report = run_kernel("attention", hand_kernels.attention_last_row_unwritten,
                        KernelOptions(lengths=(1, 13, 127, 257), dtypes=("float32", "bfloat16"), backward=False))
    assert not any(report.cases) and len(report.cases) == 16
    assert all(case.forward["positions_over"] == [case.length - 1] for case in report.cases)
    assert report.pattern == "only the last position (row T - 1) is wrong: a final row or tile never written or masked off"


@pytest.mark.parametrize("op, naive", [("softmax", hand_kernels.softmax_naive), ("cross_entropy", hand_kernels.cross_entropy_naive)])
def test_a_naive_exp_overflows_on_extreme_inputs_only(op, naive):
    report = run_kernel(op, naive)
    assert not report and report.pattern.startswith("only on extreme inputs")
    assert all(case for case in report.cases if case.condition == "normal")
    failing = [case for case in report.cases if not case]
    assert any(case.forward.get("nonfinite_candidate") for case in failing)


@pytest.mark.parametrize("op, kernel, names", [("rms_norm", hand_kernels.rms_norm_numpy, "x, weight"),
                                               ("swiglu", hand_kernels.swiglu_no_grad, "gate, up")])
def test_a_kernel_outside_autograd_is_named_a_broken_autograd(op, kernel, names):
    report = run_kernel(op, kernel)
    assert report.verdict == "broken_autograd"
    assert all(case.forward["passed"] for case in report.cases)  # the numbers are right: only the graph is missing
    assert report.pattern.startswith("broken autograd: the output has no grad_fn") and names in report.pattern


def test_no_backward_checks_the_forward_only():
    report = run_kernel("swiglu", hand_kernels.swiglu_no_grad, KernelOptions(backward=False))
    assert report and all(case.backward["checked"] is False for case in report.cases)


def test_tanh_gelu_is_not_exact_gelu_in_float32():
    report = run_kernel("gelu", lambda x, approximate: hand_kernels.gelu(x, "tanh"), KernelOptions(dtypes=("float32",)))
    assert not report and all(not case for case in report.cases if case.condition == "normal")


def test_a_wrong_gradient_fails_the_backward_only():
    import torch

    class WrongBackward(torch.autograd.Function):
        @staticmethod
        def forward(ctx, x):
            ctx.save_for_backward(x)
            return x * torch.sigmoid(x)

        @staticmethod
        def backward(ctx, grad):
            (x,) = ctx.saved_tensors
            return grad * torch.sigmoid(x)  # forgets the product rule's second term

    report = run_kernel("silu", WrongBackward.apply, KernelOptions(dtypes=("float32",), lengths=(13,)))
    assert not report and all(case.forward["passed"] and not case.backward["passed"] for case in report.cases)
    assert "the forward pass matches, the backward does not" in report.pattern


def test_bench_times_both_sides():
    report = run_kernel("silu", hand_kernels.silu, KernelOptions(lengths=(13,), dtypes=("float32",), bench=True))
    timing = report.timing
    assert timing["candidate_ms"] > 0 and timing["reference_ms"] > 0
    assert timing["speedup"] == pytest.approx(timing["reference_ms"] / timing["candidate_ms"])
