"""One case of `parity kernel`: forward and backward of the candidate against the float64 reference.

Tolerances are calibrated per case. The noise floor of a dtype is the larger of
  - the reference's own error when run at that dtype (on the same rounded inputs), and
  - how far the float64 result moves when every input moves by two units of roundoff of
    that dtype (x * (1 + 2u * s), s = +-1 at random): what any backward-stable kernel at
    that dtype may be off by, where PyTorch's own kernel happens to be more accurate
    (two: a kernel rounds at least an intermediate and its output);
and the candidate may make KERNEL_NOISE_FACTOR times that (core/tolerances.py, with the unit roundoff):

    |candidate - reference64| <= atol + rtol * |reference64|
    atol = KERNEL_NOISE_FACTOR * max(noise max_abs, unit roundoff * max|reference64|, floor)
    rtol = KERNEL_NOISE_FACTOR * unit roundoff

For gradients, `floor` is u * max|upstream| * max|output| / max|input|: an ulp of the
input carried through the op's scale, for gradients that are all but zero (a saturated
softmax), where any rounding is a relative error of 100%.

Elements where the reference overflows at that dtype too (finite in float64,
not at the dtype) are not held against the candidate, and are counted.
"""

from __future__ import annotations

import numpy as np
import torch

from parity.core.isolation import guarded, is_user_exit
from parity.core.metrics import measure
from parity.core.results import one_line
from parity.core.results.kernel import NOT_ASKED, CaseResult
from parity.core.tolerances import KERNEL_NOISE_FACTOR, kernel_tolerance, unit_roundoff
from parity.kernel.ops import Case, Op


def run_case(op: Op, candidate, case: Case, dtype: str, condition: str, *, backward: bool, device: str,
             seed: int) -> CaseResult:
    """The candidate's forward (and backward) on this case, against the float64 reference."""
    torch_dtype = getattr(torch, dtype)
    low = {name: _cast(tensor, torch_dtype, device) for name, tensor in case.inputs.items()}
    exact = {name: (tensor.to(torch.float64) if tensor.is_floating_point() else tensor) for name, tensor in low.items()}
    differentiable = [name for name, tensor in case.inputs.items()
                      if tensor.is_floating_point() and name not in case.constants] if backward else []
    reference64 = _run(op.reference, op, case, exact, differentiable)
    perturbed = _run(op.reference, op, case, _perturbed(exact, case, unit_roundoff(dtype), seed), differentiable)
    reference_low = _run(op.reference, op, case, low, differentiable)
    not_run = {"checked": False, "reason": NOT_ASKED}
    try:   # the candidate's code and what it returned: whatever it does (raise, exit, return junk) is a finding
        with guarded():
            candidate_run = _run(candidate, op, case, low, differentiable)
            output, reference_output = candidate_run["output"], reference64["output"]
            problem = output_problem(output, reference_output)
            forward = ({"passed": False, "reason": problem} if problem else
                       _compare(reference_output, [reference_low["output"], perturbed["output"]], output, dtype,
                                per_row=True))
    except BaseException as error:
        if not is_user_exit(error):
            raise
        return CaseResult(case.dims, dtype, condition, {"passed": False, "reason": _described(error)},
                          {"checked": False, "reason": "the forward pass raised"} if backward else not_run)
    if not backward:
        return CaseResult(case.dims, dtype, condition, forward, not_run)
    if problem:
        return CaseResult(case.dims, dtype, condition, forward,
                          {"checked": False, "reason": "the forward pass returned no usable tensor"})
    try:
        with guarded():
            gradients = _backward(reference64, [reference_low, perturbed], candidate_run, differentiable, dtype,
                                  seed, forward["passed"])
    except BaseException as error:
        if not is_user_exit(error):
            raise
        gradients = {"passed": False, "checked": True, "reason": f"the backward pass {_described(error)}"}
    return CaseResult(case.dims, dtype, condition, forward, gradients)


def output_problem(output, reference: torch.Tensor) -> str | None:
    """Why the candidate's output cannot be compared (not a tensor, not floating, another shape), or None."""
    if not isinstance(output, torch.Tensor):
        return f"returned {type(output).__name__}, not a torch.Tensor"
    if output.layout != torch.strided or output.is_complex() or not output.is_floating_point():
        return f"returned a {str(output.dtype).removeprefix('torch.')} tensor, not a real floating one"
    if tuple(output.shape) != tuple(reference.shape):
        return f"returned shape {tuple(output.shape)}, the reference's is {tuple(reference.shape)}"
    if output.device.type == "meta":
        return "returned a tensor on the meta device, which holds no values"
    return None


def _described(error: BaseException) -> str:
    """'raised ValueError: ... (at file:line)', or 'called os._exit(0) (at file:line)'."""
    from parity.capture.torch.factory import describe_error
    from parity.core.isolation import ExitCalled

    return describe_error(error) if isinstance(error, ExitCalled) else f"raised {describe_error(error)}"


def _cast(tensor: torch.Tensor, dtype: torch.dtype, device: str) -> torch.Tensor:
    return (tensor.to(dtype) if tensor.is_floating_point() else tensor).to(device)


def _run(function, op: Op, case: Case, tensors: dict[str, torch.Tensor], differentiable: list[str]) -> dict:
    """Call `function` on fresh leaf copies of `tensors` (those in `differentiable` requiring grad)."""
    leaves = {name: tensor.detach().clone().requires_grad_(name in differentiable) for name, tensor in tensors.items()}
    args, kwargs = op.arguments(case, leaves)
    with torch.enable_grad():
        output = function(*args, **kwargs)
    return {"output": output, "leaves": leaves}


def _perturbed(tensors: dict[str, torch.Tensor], case: Case, unit: float, seed: int) -> dict[str, torch.Tensor]:
    """Every floating input (masks excepted) times (1 + 2 * unit * s), s = +-1 at random."""
    generator = torch.Generator().manual_seed(seed + 1)
    moved = {}
    for name, tensor in tensors.items():
        if tensor.is_floating_point() and name not in case.constants:
            signs = torch.randint(0, 2, tensor.shape, generator=generator).to(tensor.device, torch.float64) * 2 - 1
            tensor = tensor * (1 + 2 * unit * signs)
        moved[name] = tensor
    return moved


def _compare(reference64: torch.Tensor, noisy: list[torch.Tensor], candidate, dtype: str, floor: float = 0.0, *,
             per_row: bool = False) -> dict:
    """The candidate's error against float64, under the tolerance the `noisy` references' error sets; with
    `per_row` (outputs, whose rows are computed apart) each row under its own noise as well. A gradient's row
    sums over every output row, so its noise is no row's own: gradients are held to the whole tensor's."""
    if not isinstance(candidate, torch.Tensor):
        return {"passed": False, "reason": f"returned {type(candidate).__name__}, not a tensor"}
    if tuple(candidate.shape) != tuple(reference64.shape):
        return {"passed": False, "reason": f"shape {tuple(candidate.shape)}, the reference's is {tuple(reference64.shape)}"}
    exact, got = _numpy(reference64), _numpy(candidate)
    low, *others = [_numpy(tensor) for tensor in noisy]
    excused = np.isfinite(exact) & ~np.isfinite(low)              # the dtype itself overflows here
    if excused.any():
        exact, got = np.where(excused, 0.0, exact), np.where(excused, 0.0, got)
    noise = 0.0
    for reference in (low, *others):
        finite = np.isfinite(exact) & np.isfinite(reference)
        noise = max(noise, float(np.abs(reference - exact)[finite].max(initial=0.0)))
    tolerance = kernel_tolerance(noise, _max_abs(exact), dtype, floor)
    metrics = measure(exact, got, tolerance, token_axis=0)
    positions = rows_over_their_bound(exact, got, [low, *others], dtype, floor) if per_row else []
    explanation = one_line(tolerance.explain(metrics))
    if positions:
        explanation += (f"; {len(positions)} position(s) wrong against their own rows' noise (each row held to "
                        f"{KERNEL_NOISE_FACTOR:g}x its own): {positions[:8]}")
    return {"passed": metrics.mismatched == 0 and not positions, "positions_over": positions[:64],
            "max_abs": metrics.max_abs, "rel_l2": metrics.rel_l2,
            "mismatched": metrics.mismatched, "numel": metrics.numel, "atol": tolerance.atol, "rtol": tolerance.rtol,
            "noise_max_abs": noise, "nonfinite_candidate": metrics.nan_candidate + metrics.inf_candidate,
            "excused_nonfinite": int(excused.sum()), "worst_index": metrics.worst_index,
            "explanation": explanation}


def rows_over_their_bound(exact: np.ndarray, got: np.ndarray, noisy: list[np.ndarray], dtype: str,
                          floor: float = 0.0) -> list[int]:
    """The positions (the next-to-last axis) with a row (the last axis) wrong against that row's own noise.

    The whole-tensor tolerance takes its noise from the largest values anywhere: with extreme inputs in
    bfloat16 a row left unwritten among 257 stays inside it. Each row is held to KERNEL_NOISE_FACTOR x
    the larger of its own noise (the references at the dtype, against float64) and a roundoff of its own
    largest value, never less than the case's floor: as tight as the row's numbers, no tighter.
    """
    if exact.ndim < 2 or exact.shape[-1] == 0:
        return []
    finite = np.isfinite(exact)
    noise = np.zeros(exact.shape[:-1] + (1,))
    for reference in noisy:
        both = finite & np.isfinite(reference)
        noise = np.maximum(noise, np.where(both, np.abs(reference - exact), 0.0).max(-1, keepdims=True))
    magnitude = np.where(finite, np.abs(exact), 0.0)
    unit = unit_roundoff(dtype)
    atol = KERNEL_NOISE_FACTOR * np.maximum(np.maximum(noise, unit * magnitude.max(-1, keepdims=True)), floor)
    with np.errstate(invalid="ignore"):
        over = finite & ~(np.abs(got - exact) <= atol + KERNEL_NOISE_FACTOR * unit * magnitude)
    rows = over.any(-1)                                   # (..., T)
    return sorted({int(position) for position in np.nonzero(rows)[-1]})


def _numpy(tensor: torch.Tensor) -> np.ndarray:
    return tensor.detach().cpu().double().numpy()


def _max_abs(array: np.ndarray) -> float:
    return float(np.abs(array[np.isfinite(array)]).max(initial=0.0))


def _backward(reference64: dict, noisy: list[dict], candidate: dict, names: list[str], dtype: str, seed: int,
              forward_passed: bool) -> dict:
    """Every differentiable input's gradient, for the same upstream gradient, against float64 autograd.

    An output without grad_fn is a broken autograd when its values are right; when they
    are wrong too (a kernel that writes nothing), the forward failure is the finding."""
    output = candidate["output"]
    if output.grad_fn is None:
        return {"checked": False, "broken_autograd": forward_passed,
                "reason": "the output has no grad_fn: the kernel runs outside autograd (under no_grad, through "
                          "numpy, or detached), so no gradient reaches " + ", ".join(names)}
    generator = torch.Generator().manual_seed(seed)
    upstream = torch.randn(reference64["output"].shape, generator=generator, dtype=torch.float64)
    gradients = {}
    runs = {"exact": reference64, "candidate": candidate, **{f"noisy{i}": run for i, run in enumerate(noisy)}}
    for label, run in runs.items():
        leaves = [run["leaves"][name] for name in names]
        grad_output = upstream.to(run["output"].dtype).to(run["output"].device)
        gradients[label] = torch.autograd.grad(run["output"], leaves, grad_output, allow_unused=True)
    output_scale = _max_abs(_numpy(reference64["output"])) * float(upstream.abs().max())
    inputs, missing = {}, []
    for index, name in enumerate(names):
        got = gradients["candidate"][index]
        if got is None:
            missing.append(name)
            continue
        input_scale = _max_abs(_numpy(reference64["leaves"][name])) or 1.0
        floor = unit_roundoff(dtype) * output_scale / input_scale
        inputs[name] = _compare(gradients["exact"][index], [gradients[f"noisy{i}"][index] for i in range(len(noisy))],
                                got, dtype, floor)
    if missing:
        return {"passed": False, "checked": True, "broken_autograd": True, "inputs": inputs,
                "reason": f"no gradient reaches {', '.join(missing)}: part of the kernel runs outside autograd"}
    failed = [name for name, result in inputs.items() if not result["passed"]]
    worst = max(inputs, key=lambda name: inputs[name].get("rel_l2", float("inf")))
    return {"passed": not failed, "checked": True, "failed_inputs": failed, "max_abs": inputs[worst].get("max_abs"),
            "rel_l2": inputs[worst].get("rel_l2"), "worst_input": worst, "inputs": inputs}
