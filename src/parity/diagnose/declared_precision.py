"""declared_precision: the candidate holds a checkpoint in a narrower format than it declares.

A port that keeps its weights in float16 or bfloat16 (tinygrad's LLM does by default)
but computes and declares float32 is held to float32's noise, and fails at the first
table lookup: its embedding rows are the reference's rounded to the narrower format.
The evidence is in the values themselves: every finite value of the candidate's
checkpoint is a float16 (or bfloat16) while the reference's are not, and the error
is of that format's size. The fix is the declaration (a trace's `dtype` metadata),
so that the tolerances come from the format the port holds, or the port keeping the
checkpoint in the precision it declares. The format is read on at most SAMPLED
values, evenly spaced (a long input's logits are hundreds of millions).
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

from parity.core.results import Diagnosis
from parity.diagnose import register
from parity.diagnose.context import Context, machine_epsilon

NARROWER = ("bfloat16", "float16")   # in this order: a bfloat16 value in float16's range is a float16 too
WIDE = ("float32", "float64", None)  # declared precisions a narrower format hides under (None: not declared)
HELD = 0.999                         # of the candidate's values, at least this fraction are of the format
NOT_HELD = 0.5                       # of the reference's, at most this fraction (else the test tells nothing)
UNITS = 4                            # the error is within this many of the format's machine epsilons
SAMPLED = 1 << 20                    # values read for the format test, at most


@register("declared_precision")
def declared_precision(context: Context) -> Iterator[Diagnosis]:
    declared = context.candidate.metadata.get("dtype")
    divergence = context.comparison.first_divergence
    if declared not in WIDE or divergence is None:
        return
    result = context.comparison.result(divergence.checkpoint)
    pair = context.pair(divergence.checkpoint)
    if pair is None or result is None or result.metrics is None or result.metrics.new_nonfinite:
        return   # NaN or Inf where the reference has none: an overflow (nonfinite), not a declaration
    reference, candidate = (_sampled(values) for values in pair)
    error = result.metrics.rel_l2
    for narrower in NARROWER:
        held = _fraction_of_format(candidate, narrower)
        if held >= HELD and _fraction_of_format(reference, narrower) <= NOT_HELD \
                and error <= UNITS * machine_epsilon(narrower):
            yield Diagnosis(
                "declared_precision", divergence.checkpoint,
                f"every value of the candidate's {divergence.checkpoint} is a {narrower} ({held:.1%}; the "
                f"reference's are not) and its error (rel_l2 {error:.2g}) is of {narrower}'s size: the candidate "
                f"holds it in {narrower} while it {'declares ' + declared if declared else 'declares no dtype'}, so "
                f"it is held to {declared or 'float32'}'s noise. Declare {narrower} (a trace's `dtype` metadata; a "
                f"PyTorch module's `parity_dtype` attribute) to be calibrated at that precision, or keep it in "
                f"{declared or 'float32'}")
            return


def _sampled(values: np.ndarray) -> np.ndarray:
    """At most SAMPLED of the values, evenly spaced, flat."""
    flat = np.asarray(values).reshape(-1)
    return flat[::max(1, -(-flat.size // SAMPLED))]


def _fraction_of_format(values: np.ndarray, narrower: str) -> float:
    """The fraction of the finite values that the narrower format holds exactly."""
    finite = np.asarray(values, dtype=np.float64)
    finite = finite[np.isfinite(finite)]
    if finite.size == 0:
        return 0.0
    if narrower == "float16":
        with np.errstate(over="ignore"):
            rounded = finite.astype(np.float16).astype(np.float64)
    else:   # bfloat16: float32 values whose low 16 bits are zero
        single = finite.astype(np.float32)
        rounded = (single.view(np.uint32) & np.uint32(0xFFFF0000)).view(np.float32).astype(np.float64)
        rounded = np.where(single.astype(np.float64) == finite, rounded, np.nan)
    return float(np.mean(rounded == finite))
