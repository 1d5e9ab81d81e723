"""Confirmed repairs: a cause with an inverse is tested by applying the inverse to the candidate.

Where a cause can be undone (a permutation reversed, a factor divided out, a
rotation turned back and redone at the config's angles, a mask redrawn), the
candidate's own tensor is repaired and held to the reference with the very
tolerance its checkpoint was compared with. Within it, the cause is `confirmed`:
the candidate is the reference with that one mistake. Otherwise it is `likely`
(the hypothesis explains most of the error, not all of it). A cause without an
inverse carries no confidence.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from parity.core.metrics import measure, rel_l2
from parity.core.names import parse
from parity.core.results import Diagnosis
from parity.diagnose.context import Context

CONFIRMED, LIKELY = "confirmed", "likely"
FLOAT32_FLOOR = 1e-4   # without a recorded tolerance: float32's default rtol, the loosest a repair is held to


def verdict(context: Context, name: str, repaired: np.ndarray | None) -> tuple[str, float | None]:
    """(CONFIRMED or LIKELY, rel_l2 of the repaired tensor against the reference's)."""
    pair = context.pair(name)
    if pair is None or repaired is None or repaired.shape != pair[0].shape or not np.all(np.isfinite(repaired)):
        return LIKELY, None
    reference = pair[0]
    left = rel_l2(reference, repaired)
    result = context.comparison.result(name)
    tolerance = result.tolerance if result is not None else None
    if tolerance is None:
        return (CONFIRMED if left <= FLOAT32_FLOOR else LIKELY), left
    checkpoint = parse(name)
    metrics = measure(reference, repaired, tolerance, token_axis=checkpoint.token_axis if checkpoint else 0)
    return (CONFIRMED if tolerance.admits(metrics) else LIKELY), left


def confirm(context: Context, diagnosis: Diagnosis, repaired: np.ndarray | None, undo: str) -> Diagnosis:
    """The diagnosis with its confidence, and a sentence saying what was undone and what it left."""
    confidence, left = verdict(context, diagnosis.checkpoint, repaired)
    if left is None:
        sentence = f"likely: {undo} could not be applied to the candidate's tensor"
    elif confidence == CONFIRMED:
        sentence = f"confirmed: {undo} restores the reference's {diagnosis.checkpoint} within its tolerance (rel_l2 {left:.2g})"
    else:
        sentence = f"likely: {undo} leaves rel_l2 {left:.2g} against the reference's {diagnosis.checkpoint}, beyond its tolerance"
    return dataclasses.replace(diagnosis, message=f"{diagnosis.message}; {sentence}", confidence=confidence)
