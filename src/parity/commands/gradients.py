"""`parity check --gradients`: backward parity of a PyTorch candidate with its reference.

Both take the next-token loss on the prompt and run backward. Every checkpoint's
incoming gradient (backward hooks on the recorded tensors) and every tapped
parameter's gradient (canonical names: `layers.3.q.weight`) are compared; the
first divergence is reported in backward order (from the logits down to the
embedding), and any trainable parameter of the candidate left without a gradient
is named: a broken autograd.
"""

from __future__ import annotations

import numpy as np

from parity.core.metrics import rel_l2
from parity.core.names import in_flow_order
from parity.core.results import GradientComparison, GradientResult
from parity.core.tolerances import gradient_bound


def compare_gradients(reference, candidate, dtype: str) -> GradientComparison:
    """Two GradientRecords, each gradient's rel_l2 held to the dtype's bound (core/tolerances.py)."""
    bound = gradient_bound(dtype)
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
        candidate.require("gradients", "--gradients")
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
