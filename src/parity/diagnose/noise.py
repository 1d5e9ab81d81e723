"""precision_noise: differences that look like rounding or quantization, not a bug.

Rounding and quantization perturb every value a little and independently of
what the value is: directions are kept (cosine stays near 1 everywhere) and the
error is not a rescaling of the values. Bugs break one of the two: a wrong
rotation, mask or head order turns directions; a wrong norm epsilon or a
missing scale changes magnitudes along the values themselves. This is a
heuristic read of the numbers; calibrating against the reference run at the
candidate's precision measures the noise instead.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

from parity.core.calibrate import MULTIPLE
from parity.core.names import parse
from parity.core.results import Diagnosis
from parity.core.trace import Trace
from parity.diagnose import register
from parity.diagnose.context import Context

MIN_COSINE = 0.99          # noise keeps every checkpoint's direction; planted bugs reached 0.93 and below
BLIND_SPOT = 0.05          # a pass names the widest bound when it lets an error this large through
MAX_ALONG_VALUES = 0.9     # |cos(error, value)| per row: a rescaling reads ~1.0, Q8 activation noise <= 0.61


@register("precision_noise")
def precision_noise(context: Context) -> Iterator[Diagnosis | str]:
    comparison, reference, candidate = context.comparison, context.reference, context.candidate
    failed = [result for result in comparison.checkpoints if result.failed]
    if comparison.calibrated and not failed and comparison.checkpoints:
        calibrated = [r for r in comparison.checkpoints if r.metrics is not None and r.tolerance is not None
                      and r.tolerance.calibrated]
        worst = max(calibrated, key=lambda r: r.metrics.rel_l2 / r.tolerance.max_rel_l2, default=None)
        if worst is not None:
            yield Diagnosis("precision_noise", worst.name,
                            f"every checkpoint's error is within {MULTIPLE:g}x the noise the candidate's precision "
                            f"alone produces; closest to its bound: {worst.name}, rel_l2 {worst.metrics.rel_l2:.3g} "
                            f"against a noise floor of {worst.tolerance.noise_rel_l2:.3g}" + _counted_once(worst)
                            + _blind_spot(calibrated))
        return
    if not failed or comparison.calibrated:
        return
    if any(result.metrics is None for result in failed):
        return  # a shape mismatch is never noise
    nonfinite = [r.name for r in failed if r.metrics.nan_candidate + r.metrics.inf_candidate > 0]
    if nonfinite:
        yield f"not precision noise: non-finite values appear at {nonfinite[0]}"
        return
    measured = [r for r in comparison.checkpoints if r.metrics is not None]
    lowest = min(measured, key=lambda r: r.metrics.cosine)
    if lowest.metrics.cosine < MIN_COSINE:
        yield (f"not precision noise: {lowest.name} points elsewhere than the reference "
               f"(cosine {lowest.metrics.cosine:.4f} < {MIN_COSINE})")
        return
    along = {r.name: error_along_values(reference[r.name], candidate[r.name], parse(r.name)) for r in failed}
    systematic = max(along, key=along.get)
    if along[systematic] > MAX_ALONG_VALUES:
        yield (f"not precision noise: at {systematic} the error is a rescaling of the values "
               f"(|cos(error, value)| {along[systematic]:.3f} > {MAX_ALONG_VALUES}), a systematic change")
        return
    first = comparison.first_divergence.checkpoint
    worst = max(failed, key=lambda r: r.metrics.rel_l2)
    message = (
        f"every checkpoint keeps the reference's direction (lowest cosine {lowest.metrics.cosine:.4f} at {lowest.name}) "
        f"and no error is a rescaling of the values (largest |cos(error, value)| {along[systematic]:.2f} at {systematic}); "
        f"the error grows to rel_l2 {worst.metrics.rel_l2:.3g} at {worst.name}"
    )
    agreement = _top1_agreement(reference, candidate)
    if agreement is not None:
        message += f"; the top-1 token agrees at {agreement[0]}/{agreement[1]} positions"
    # a failure is never called noise: without a measured noise floor this is a reading, not a cause
    yield (f"the errors look like rounding from {first} on ({message}); rerun with calibrated tolerances "
           "(a candidate of known precision) to measure the noise instead of guessing")


def _counted_once(result) -> str:
    """Where the closest checkpoint is within its bound only with each position counted once, that."""
    metrics, tolerance = result.metrics, result.tolerance
    if (metrics.rel_l2 <= tolerance.max_rel_l2 or tolerance.max_position_weighted_rel_l2 is None
            or metrics.position_weighted_rel_l2 is None):
        return ""
    return (f" (held by a few positions that dwarf the rest, a massive activation: with each position counted once "
            f"{metrics.position_weighted_rel_l2:.3g}, within {tolerance.max_position_weighted_rel_l2:.3g})")


def _blind_spot(calibrated) -> str:
    """What a pass cannot rule out: where the widest calibrated bound lets an error of BLIND_SPOT or more through
    (deep in a low-precision run, or after a quantized op, the precision's own error is that large)."""
    hidden = [r for r in calibrated if getattr(parse(r.name), "kind", None) != "attn_probs"]
    widest = max(hidden, key=lambda r: r.tolerance.max_rel_l2, default=None)
    if widest is None or widest.tolerance.max_rel_l2 < BLIND_SPOT:
        return ""
    return (f"; the widest bound is at {widest.name}, rel_l2 {widest.tolerance.max_rel_l2:.2g} (the precision's "
            f"own error there: {widest.tolerance.noise_rel_l2:.2g}): a bug smaller than that there shows only where "
            "it grows past a later checkpoint's bound (for a PyTorch candidate, --replay measures each op's own "
            "error)")


def error_along_values(reference: np.ndarray, candidate: np.ndarray, checkpoint) -> float:
    """Mean over token rows of |cos(candidate - reference, reference)|."""
    axis = checkpoint.token_axis if checkpoint is not None else 0
    if reference.shape != candidate.shape or reference.ndim <= axis:
        return 0.0
    rows = np.moveaxis(reference.astype(np.float64), axis, 0).reshape(reference.shape[axis], -1)   # (T, rest)
    error = np.moveaxis(candidate.astype(np.float64), axis, 0).reshape(reference.shape[axis], -1) - rows
    norms = np.linalg.norm(error, axis=1) * np.linalg.norm(rows, axis=1)
    mask = norms > 0
    if not mask.any():
        return 0.0
    return float(np.mean(np.abs((error * rows).sum(axis=1)[mask]) / norms[mask]))


def _top1_agreement(reference: Trace, candidate: Trace) -> tuple[int, int] | None:
    if "logits" not in reference or "logits" not in candidate or reference.shape_of("logits") != candidate.shape_of("logits"):
        return None
    agree = reference["logits"].argmax(-1) == candidate["logits"].argmax(-1)
    return int(agree.sum()), int(agree.size)
