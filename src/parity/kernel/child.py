"""`parity kernel` with the kernel in a child process: a kernel that exits, hangs or prints cannot take
parity with it.

    report = run_kernel_in_child("rms_norm", "my_kernels.py:rms_norm", KernelOptions(), timeout_s=60.0)

The child (`python -m parity.kernel.child`) imports the user's file, runs every case
under the in-process guard (cases.py: exceptions, SystemExit and any BaseException are
that case's finding) and sends each case's name before running it, so that the parent
holds every case to `timeout_s`. A kernel that calls os._exit, is killed by a signal
or runs past its time ends the run with one line and exit 2, naming the case. What
the kernel prints goes to standard error, never into `--json -`.
"""

from __future__ import annotations

import dataclasses
import os
import sys

from parity.core.isolation import child_events, plain, read_request, run_child

DEFAULT_TIMEOUT_S = 60.0   # one case: a kernel that needs longer at these sizes has a bug of its own


def run_kernel_in_child(op_name: str, spec: str, options, *, timeout_s: float = DEFAULT_TIMEOUT_S, progress=None):
    """The KernelReport of `spec` (FILE.py:FUNCTION) on `op_name`, computed in a child process."""
    from parity.kernel.pattern import describe
    from parity.core.results.kernel import CaseResult, KernelReport

    request = {"op": op_name, "spec": spec, "options": dataclasses.asdict(options)}
    results = run_child("parity.kernel.child", request, step_timeout_s=timeout_s, what=f"the kernel {spec}",
                        on_step=(lambda step: progress.step(f"kernel {op_name}: {step}")) if progress else None)
    report = results[-1]["report"]
    cases = tuple(CaseResult(case["dims"], case["dtype"], case["condition"], case["forward"], case["backward"])
                  for case in report["cases"])
    return KernelReport(op=report["op"], signature=report["signature"], candidate=report["candidate"], cases=cases,
                        pattern=describe(cases), timing=report.get("timing"), settings=report["settings"])


def _main() -> None:
    request = read_request()
    with child_events() as emit:
        from parity.capture.torch.factory import load_factory
        from parity.kernel import KernelOptions, run_kernel

        options = KernelOptions(**{key: tuple(value) if isinstance(value, list) else value
                                   for key, value in request["options"].items()})
        import torch  # noqa: F401  parity's own import, in the child's start: not the user's step's time

        emit("step", name="importing the kernel")
        candidate = load_factory(request["spec"], what=f"a function with the arguments of {request['op']}")
        report = run_kernel(request["op"], candidate, options, label=request["spec"],
                            step=lambda name: emit("step", name=name))
        emit("result", report=plain(report.to_dict()))


if __name__ == "__main__":
    _main()
    sys.stderr.flush()
    os._exit(0)   # threads the kernel started do not hold the child open
