"""`parity check --gradients`: backward parity of a PyTorch candidate with its reference.

Both take the next-token loss on the prompt and run backward. Every checkpoint's
incoming gradient (backward hooks on the recorded tensors) and every tapped
parameter's gradient (canonical names: `layers.3.q.weight`) are compared; the
first divergence is reported in backward order (from the logits down to the
embedding), and any trainable parameter of the candidate left without a gradient
is named: a broken autograd.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from parity.core.metrics import rel_l2
from parity.core.names import in_flow_order

# Bound on each gradient's rel_l2 against the reference's, by the lower precision of the two:
# a few hundred times the unit roundoff, for the sums over the sequence and the layers that backward adds.
REL_L2_BOUND = {"float64": 1e-9, "float32": 1e-4, "float16": 2e-2, "bfloat16": 1e-1}


@dataclass(frozen=True)
class GradientResult:
    name: str
    rel_l2: float
    bound: float
    passed: bool

    def __bool__(self) -> bool:
        return self.passed

    def __repr__(self) -> str:
        return f"<GradientResult {self.name} rel_l2 {self.rel_l2:.3g} {'ok' if self.passed else 'FAIL'}>"


@dataclass(frozen=True)
class GradientComparison:
    loss_reference: float
    loss_candidate: float
    checkpoints: tuple[GradientResult, ...]        # backward order
    parameters: tuple[GradientResult, ...]
    without_gradient: tuple[str, ...]
    missing: tuple[str, ...] = field(default=())   # recorded on one side only
    trainable: int = 0                             # the candidate's trainable parameters

    def __bool__(self) -> bool:
        return not self.without_gradient and all(self.checkpoints) and all(self.parameters)

    def __repr__(self) -> str:
        first = self.first_divergence
        return f"<GradientComparison {'pass' if self else 'FAIL'}{f', first divergence at {first.name}' if first is not None else ''}>"

    @property
    def first_divergence(self) -> GradientResult | None:
        return next((result for result in self.checkpoints if not result.passed), None)

    def to_dict(self) -> dict:
        first = self.first_divergence
        return {"verdict": "pass" if self else "fail", "loss_reference": self.loss_reference,
                "loss_candidate": self.loss_candidate, "first_divergence": first.name if first is not None else None,
                "without_gradient": list(self.without_gradient), "missing": list(self.missing),
                "trainable_parameters": self.trainable,
                "checkpoints": [result.__dict__ for result in self.checkpoints],
                "parameters": [result.__dict__ for result in self.parameters]}


def compare_gradients(reference, candidate, dtype: str) -> GradientComparison:
    """Two GradientRecords, compared under REL_L2_BOUND[dtype]."""
    bound = REL_L2_BOUND.get(dtype, REL_L2_BOUND["float32"])
    shared = [name for name in in_flow_order(list(reference.checkpoints)) if name in candidate.checkpoints]
    checkpoints = tuple(_result(name, reference.checkpoints[name], candidate.checkpoints[name], bound)
                        for name in reversed(shared))                                   # backward order
    parameters = tuple(_result(name, reference.parameters[name], candidate.parameters[name], bound)
                       for name in sorted(reference.parameters) if name in candidate.parameters)
    missing = sorted((set(reference.checkpoints) ^ set(candidate.checkpoints)))
    return GradientComparison(reference.loss, candidate.loss, checkpoints, parameters,
                              tuple(candidate.without_gradient), tuple(missing), candidate.trainable)


def _result(name: str, reference: np.ndarray, candidate: np.ndarray, bound: float) -> GradientResult:
    if reference.shape != candidate.shape:
        return GradientResult(name, float("inf"), bound, False)
    error = rel_l2(reference, candidate)
    finite = bool(np.isfinite(candidate).all() or not np.isfinite(reference).all())
    return GradientResult(name, error, bound, finite and error <= bound)


def run_gradients(model_path: str, candidate_spec: str, tokens: list[int] | None, prompt: str | None,
                  taps: str | None, progress) -> GradientComparison:
    """Load both sides (the reference at the candidate's precision), record and compare their gradients."""
    from parity.capture.candidate import CandidateContext, open_candidate

    with open_candidate(candidate_spec, CandidateContext(model_path=model_path, progress=progress),
                        needs=("gradients",)) as candidate:
        return _run_gradients(model_path, candidate, tokens, prompt, taps, progress)


def _run_gradients(model_path: str, candidate, tokens, prompt, taps, progress) -> GradientComparison:
    from parity.capture.hf.model import load_model, quiet_transformers
    from parity.capture.torch.gradients import record_gradients
    from parity.core.errors import OptionError
    from parity.core.names import FAMILY_TAPS

    dtype = candidate.precision or "float32"
    quiet_transformers()
    progress.step(f"loading {model_path} ({dtype})")
    reference = load_model(model_path, dtype=dtype)
    ids = tokens if tokens is not None else reference.tokenize(prompt)
    if len(ids) < 2:
        raise OptionError("--gradients needs at least 2 tokens: the loss predicts each next token")
    candidate_taps = candidate.taps(taps)
    progress.step(f"backward on the reference over {len(ids)} tokens")
    reference_record = record_gradients(reference.model, ids, FAMILY_TAPS[reference.family])
    progress.step("backward on the candidate")
    candidate_record = record_gradients(candidate.module.train(False), ids, candidate_taps)
    return compare_gradients(reference_record, candidate_record, dtype)


def render(comparison: GradientComparison) -> str:
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
    worst = max((r for r in results if np.isfinite(r.rel_l2)), key=lambda r: r.rel_l2, default=None)
    bound = results[0].bound if results else float("nan")
    verdict = "PASS" if comparison else "FAIL"
    lines.append(f"{verdict}  {sum(map(bool, comparison.checkpoints))}/{len(comparison.checkpoints)} checkpoint "
                 f"gradients and {sum(map(bool, comparison.parameters))}/{len(comparison.parameters)} parameter "
                 f"gradients within rel_l2 {bound:.0e}"
                 + (f"; largest {worst.name} {worst.rel_l2:.3g}" if worst is not None else ""))
    return "\n".join(lines)
