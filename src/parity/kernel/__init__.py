"""`parity kernel`: one op of a port against its torch.nn.functional reference in float64.

    report = run_kernel("rms_norm", my_rms_norm, KernelOptions())
    bool(report), report.pattern, report.to_dict()

Every length in the sweep (tile-aligned and not) x every dtype x two conditions
("normal", "extreme"); forward and backward; tolerances calibrated per case
(see cases.py); the pattern in the failures named (pattern.py).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from parity.kernel.cases import run_case
from parity.kernel.ops import CONDITIONS, OPS, get_op
from parity.kernel.pattern import describe
from parity.core.results.kernel import CaseResult, KernelReport
from parity.kernel.timing import compare_speed

__all__ = ["KernelOptions", "KernelReport", "CaseResult", "OPS", "run_kernel"]


@dataclass(frozen=True)
class KernelOptions:
    lengths: tuple[int, ...] = (1, 13, 64, 127, 257)   # 64-wide tiles: aligned, short, one short of two, one past four
    dtypes: tuple[str, ...] = ("float32", "bfloat16", "float16")
    conditions: tuple[str, ...] = CONDITIONS
    backward: bool = True
    bench: bool = False
    device: str = "cpu"
    seed: int = 0


def run_kernel(op_name: str, candidate: Callable, options: KernelOptions = KernelOptions(), *,
               label: str = "candidate", progress=None) -> KernelReport:
    """Every case of `op_name` for `candidate`; with options.bench, its speed against PyTorch's."""
    op = get_op(op_name)
    results = []
    for length in options.lengths:
        if progress is not None:
            progress.step(f"kernel {op_name}: T = {length}")
        for condition in options.conditions:
            case = op.make(length, condition, torch.Generator().manual_seed(options.seed * 7919 + length))
            for dtype in options.dtypes:
                results.append(run_case(op, candidate, case, dtype, condition, backward=options.backward,
                                        device=options.device, seed=options.seed))
    cases = tuple(results)
    timing = None
    if options.bench:
        length = max(options.lengths)
        case = op.make(length, "normal", torch.Generator().manual_seed(options.seed))
        timing = compare_speed(op, candidate, case, options.dtypes[0], options.device)
    settings = {"lengths": list(options.lengths), "dtypes": list(options.dtypes), "conditions": list(options.conditions),
                "backward": options.backward, "device": options.device, "seed": options.seed}
    return KernelReport(op=op_name, signature=op.signature, candidate=label, cases=cases, pattern=describe(cases),
                        timing=timing, settings=settings)
