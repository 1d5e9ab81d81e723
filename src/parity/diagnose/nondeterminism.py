"""nondeterministic: two runs of the candidate on the same tokens part at a checkpoint. Something random runs
at inference there (dropout left on, memory read before it is written, sampling inside the forward), or the
forward keeps state from one call to the next, and the comparison's divergence from that checkpoint on is
that, not a mistake of arithmetic.

The runs are held to each checkpoint's own tolerance: run-to-run rounding (a GPU's atomics, a BLAS's
alignment-dependent kernels) stays within it; only a difference the comparison would fail counts, and only
one of a size with the candidate's error there (a deterministic bug on a machine whose runs jitter is no
randomness to name).
"""

from __future__ import annotations

import dataclasses

from parity.core.metrics import measure
from parity.core.names import parse
from parity.core.results import Comparison, Diagnosis
from parity.core.trace import Trace
from parity.diagnose.context import widened

SIZEABLE = 0.25   # the runs must differ by this much of the candidate's error against the reference there

ADVICE = ("something random runs at inference: dropout left on (F.dropout(..., training=True), or "
          "scaled_dot_product_attention's dropout_p passed in eval mode), a tensor read before it is written "
          "(torch.empty where torch.zeros is meant), sampling inside the forward, or state its forward keeps from "
          "one call to the next (a cache it appends to when not asked to)")


def where_runs_part(comparison: Comparison, first: Trace, second: Trace) -> Diagnosis | None:
    """The first checkpoint, in the order the first run recorded them, whose two runs differ past its tolerance."""
    for name in first.names:
        result = comparison.result(name)
        if result is None or result.tolerance is None or name not in second:
            continue
        earlier, later = widened(first[name]), widened(second[name])
        if earlier.shape != later.shape:
            continue
        checkpoint = parse(name)
        metrics = measure(earlier, later, result.tolerance, token_axis=checkpoint.token_axis if checkpoint else 0)
        between = metrics.rel_l2
        if result.tolerance.admits(metrics) or (result.metrics is not None
                                                and between < SIZEABLE * result.metrics.rel_l2):
            continue
        against = f"; against the reference: {result.metrics.rel_l2:.2g}" if result.metrics is not None else ""
        return Diagnosis("nondeterministic", name,
                         f"two runs of the candidate on the same tokens differ at {name} (rel_l2 {between:.2g} "
                         f"between the runs{against}), where those recorded before it agree: {ADVICE}",
                         confidence="confirmed")
    return None


def with_runs_compared(comparison: Comparison, first: Trace, second: Trace) -> Comparison:
    """The comparison with `nondeterministic` named where the runs part (no_known_cause then dropped)."""
    found = where_runs_part(comparison, first, second)
    if found is None:
        return comparison
    kept = tuple(d for d in comparison.diagnoses if d.cause not in ("no_known_cause", "precision_noise"))
    return dataclasses.replace(comparison, diagnoses=(found,) + kept)
