"""`parity sanity` with the candidate in a child process: a factory or model that exits, hangs or
prints cannot take parity with it.

    report = run_sanity_in_child("my_port.py:build", SanityConfig(), timeout_s=300.0)

The child (`python -m parity.sanity.child`) builds the candidate from its factory and
runs the 11 tests under the in-process guard (each test's exception, SystemExit or
os._exit is that test's failure); it names each test before running it, and the
parent holds each to `timeout_s`. A candidate that kills its process or runs past its
time ends the run with one line and exit 2, naming the test. What it prints goes to
standard error.
"""

from __future__ import annotations

import dataclasses
import os
import sys

from parity.core.isolation import child_events, plain, read_request, run_child

DEFAULT_TIMEOUT_S = 300.0   # one test; the course's 4-layer model runs all 11 in about 20 s on 2 cores


def run_sanity_in_child(spec: str, settings, *, reference: str | None = None, timeout_s: float = DEFAULT_TIMEOUT_S,
                        progress=None, labels: dict[str, str] | None = None):
    """The SanityReport of the model `spec` (FILE.py:FACTORY) builds, computed in a child process."""
    from parity.core.results.sanity import SanityReport, TestResult

    request = {"spec": spec, "reference": reference, "settings": dataclasses.asdict(settings), "labels": labels or {}}
    results = run_child("parity.sanity.child", request, step_timeout_s=timeout_s, what=f"the candidate {spec}",
                        on_step=(lambda step: progress.step(f"sanity: {step}")) if progress else None)
    report = results[-1]["report"]
    tests = tuple(TestResult(test["name"], test["status"], test["message"], test.get("metrics") or {})
                  for test in report["results"])
    return SanityReport(results=tests, timestamp=report["timestamp"], environment=report["environment"],
                        test_config=report["test_config"])


def _main() -> None:
    request = read_request()
    with child_events() as emit:
        from parity.capture.torch.factory import build_module
        from parity.sanity import SanityConfig, run_sanity

        settings = SanityConfig(**request["settings"])
        import torch  # noqa: F401  parity's own import, in the child's start: not the user's step's time

        emit("step", name="building the candidate")
        candidate = build_module(request["spec"], request["reference"], guard_forward=False)   # tests guard their own
        from parity.capture.torch.opaque import why_hidden

        if hidden := why_hidden(candidate, request["spec"]):     # a function of token ids, a compiled blob
            from parity.core.errors import OptionError

            raise OptionError(f"parity sanity checks a model's components one by one, and {hidden}; check its "
                              "logits with parity check")
        report = run_sanity(candidate, settings, reference=request["reference"], labels=request["labels"],
                            step=lambda name: emit("step", name=name))
        emit("result", report=plain(report.to_dict()))


if __name__ == "__main__":
    _main()
    sys.stderr.flush()
    os._exit(0)   # threads the candidate started do not hold the child open
