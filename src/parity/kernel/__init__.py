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

from parity.core.errors import OptionError
from parity.kernel.budget import check_memory
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

    def __post_init__(self) -> None:
        if not self.lengths or any(type(length) is not int or length < 1 for length in self.lengths):
            raise OptionError(f"--lengths must be positive integers, got {list(self.lengths)[:8]}")
        if type(self.seed) is not int or not 0 <= self.seed < 2**32:
            raise OptionError(f"the kernel seed must be an integer from 0 to 2^32 - 1, got {self.seed!r}")


def run_kernel(op_name: str, candidate: Callable, options: KernelOptions = KernelOptions(), *,
               label: str = "candidate", progress=None, step: Callable[[str], None] | None = None) -> KernelReport:
    """Every case of `op_name` for `candidate`; with options.bench, its speed against PyTorch's.
    `step` is told each case's name before it runs (a child process's deadline starts there)."""
    op = get_op(op_name)
    check_memory(op, options.lengths, options.device)   # before anything of that size is made
    results = []
    for length in options.lengths:
        if progress is not None:
            progress.step(f"kernel {op_name}: T = {length}")
        for condition in options.conditions:
            case = op.make(length, condition, torch.Generator().manual_seed(options.seed * 7919 + length))
            for dtype in options.dtypes:
                if step is not None:
                    step(f"case T={length} {dtype} {condition}")
                results.append(run_case(op, candidate, case, dtype, condition, backward=options.backward,
                                        device=options.device, seed=options.seed))
    cases = tuple(results)
    timing = None
    if options.bench:
        if step is not None:
            step("the timing")
        length = max(options.lengths)
        case = op.make(length, "normal", torch.Generator().manual_seed(options.seed))
        timing = _timed(op, candidate, case, options)
    settings = {"lengths": list(options.lengths), "dtypes": list(options.dtypes), "conditions": list(options.conditions),
                "backward": options.backward, "device": options.device, "seed": options.seed}
    return KernelReport(op=op_name, signature=op.signature, candidate=label, cases=cases, pattern=describe(cases),
                        timing=timing, settings=settings)


def _timed(op, candidate: Callable, case, options: KernelOptions) -> dict | None:
    """The timing, or None when the candidate fails while timed (its cases already say how)."""
    from parity.core.isolation import guarded, is_user_exit

    try:
        with guarded():
            return compare_speed(op, candidate, case, options.dtypes[0], options.device)
    except BaseException as error:
        if not is_user_exit(error):
            raise
        return None
