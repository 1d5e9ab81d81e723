"""`parity check --gradients` on the console: the first divergence in backward order, the parameters whose
gradients differ or are missing, and the verdict. Plain text."""

from __future__ import annotations

import math

from parity.core.results import GradientComparison
from parity.report.registry import register


@register(GradientComparison, "console")
def render(comparison: GradientComparison, **_layout) -> str:
    """Not laid out to a width."""
    lines = [f"gradients of the next-token loss (reference {comparison.loss_reference:.6g}, "
             f"candidate {comparison.loss_candidate:.6g}): {len(comparison.checkpoints)} checkpoints, "
             f"{len(comparison.parameters)} of the candidate's {comparison.trainable} trainable parameters (those of "
             "modules with a checkpoint, by canonical name); every parameter is checked for a missing gradient"]
    first = comparison.first_divergence
    if first is not None:
        lines.append(f"first divergence in backward order: {first.name} (rel_l2 {first.rel_l2:.3g}, bound {first.bound:.3g})")
    failed_parameters = [result for result in comparison.parameters if not result.passed]
    if failed_parameters:
        lines.append(f"{len(failed_parameters)} parameter gradients differ; the largest: " + ", ".join(
            f"{r.name} {r.rel_l2:.3g}" for r in sorted(failed_parameters, key=lambda r: -r.rel_l2)[:3]))
    if comparison.without_gradient:
        lines.append(f"no gradient reaches {', '.join(comparison.without_gradient[:5])}: broken autograd "
                     "(detached, under no_grad, or computed outside PyTorch)")
    if comparison.missing:
        lines.append(f"not compared (recorded on one side only): {', '.join(comparison.missing[:8])}")
    results = comparison.checkpoints + comparison.parameters
    worst = max((r for r in results if math.isfinite(r.rel_l2)), key=lambda r: r.rel_l2, default=None)
    bound = results[0].bound if results else float("nan")
    verdict = "PASS" if comparison else "FAIL"
    lines.append(f"{verdict}  {sum(map(bool, comparison.checkpoints))}/{len(comparison.checkpoints)} checkpoint "
                 f"gradients and {sum(map(bool, comparison.parameters))}/{len(comparison.parameters)} parameter "
                 f"gradients within rel_l2 {bound:.0e}"
                 + (f"; largest {worst.name} {worst.rel_l2:.3g}" if worst is not None else ""))
    return "\n".join(lines) + "\n"
