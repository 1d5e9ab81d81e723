"""`parity kernel` on the console: a lengths x dtypes grid, the pattern, the first failing case, the timing.
Plain text."""

from __future__ import annotations

from parity.core.results.kernel import CaseResult, KernelReport
from parity.core.tolerances import KERNEL_NOISE_FACTOR
from parity.report.registry import register

_WIDTH = 8


def cell(case: CaseResult) -> str:
    """'✓', or what failed: '✗ fwd', '✗ bwd', '✗ both', '✗ graph' (no autograd graph)."""
    if case:
        return "✓"
    if case.broken_autograd:
        return "✗ graph"
    forward = case.forward.get("passed") is True
    backward = case.backward.get("passed") is True or case.backward.get("checked") is False and forward
    return "✗ bwd" if forward else ("✗ fwd" if backward or case.backward.get("checked") is False else "✗ both")


@register(KernelReport, "console")
def render(report: KernelReport, **_layout) -> str:
    """Not laid out to a width."""
    settings = report.settings
    dtypes, conditions = settings["dtypes"], settings["conditions"]
    by_key = {(case.length, case.dtype, case.condition): case for case in report.cases}
    column = _WIDTH * len(conditions) + 1
    lines = [f"parity kernel {report.op}: {report.candidate} against torch's {report.signature} in float64",
             f"{'forward and backward' if settings['backward'] else 'forward only (--no-backward)'} on "
             f"{settings['device']}; tolerances: {KERNEL_NOISE_FACTOR:g}x the error of the reference run at each dtype",
             ("T      " + "".join(f"{dtype:<{column}}" for dtype in dtypes)).rstrip(),
             ("       " + "".join("".join(f"{condition:<{_WIDTH}}" for condition in conditions) + " "
                                 for _ in dtypes)).rstrip()]
    for length in settings["lengths"]:
        row = "".join("".join(f"{cell(by_key[(length, dtype, condition)]):<{_WIDTH}}" for condition in conditions) + " "
                      for dtype in dtypes)
        lines.append(f"{length:<7}{row}".rstrip())
    passed = sum(map(bool, report.cases))
    verdict = "PASS" if report else "FAIL"
    lines.append(f"{verdict}  {passed}/{len(report.cases)} cases within tolerance"
                 + (f": {report.pattern}" if report.pattern else ""))
    first = next((case for case in report.cases if not case), None)
    if first is not None:
        lines.append(f"first failing case: T={first.length} {first.dtype} {first.condition}: {_explain(first)}")
    if report.timing:
        timing = report.timing
        lines.append(f"timing (T={timing['dims']['T']} {timing['dtype']} on {timing['device']}, forward, median of "
                     f"{timing['repeats']} after {timing['warmup']} warm-up calls): candidate {timing['candidate_ms']:.3g} ms, "
                     f"torch {timing['reference_ms']:.3g} ms: {timing['speedup']:.2f}x")
    return "\n".join(lines) + "\n"


def _explain(case: CaseResult) -> str:
    if case.forward.get("passed") is not True:
        return "forward " + _numbers(case.forward)
    if case.backward.get("checked") is False or "inputs" not in case.backward:
        return "backward " + case.backward.get("reason", "not checked")
    name = case.backward.get("worst_input") or next(iter(case.backward["failed_inputs"]), None)
    failed = case.backward.get("failed_inputs") or [name]
    return f"gradient of {failed[0]}: " + _numbers(case.backward["inputs"][failed[0]])


def _numbers(result: dict) -> str:
    if "reason" in result:
        return result["reason"]
    text = f"{result['explanation']}; rel_l2 {result['rel_l2']:.3g}"
    if result.get("nonfinite_candidate"):
        text += f"; {result['nonfinite_candidate']} NaN/Inf"
    return text
