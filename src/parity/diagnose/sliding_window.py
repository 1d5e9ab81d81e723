"""sliding_window: a local layer attends over a window of another width.

Read off the probabilities themselves: on each side, the widest reach of any
query (t - s + 1 over the keys it puts weight on). The reference's is checked
against the window its trace records for the layer (`architecture`), so an
off-by-one in the mask, a window not applied, or one applied to a global layer
is named with both widths.
"""

from __future__ import annotations

import numpy as np

from parity.core.results import Diagnosis
from parity.diagnose import register
from parity.diagnose.context import Context

WEIGHT = 1e-12  # a probability above this counts as attention paid


def reach(probs: np.ndarray) -> int:
    """The most keys any query spans, itself included: (H, T, S) -> t - min(s with weight) + 1."""
    heads, tokens, keys = probs.shape
    offset = keys - tokens                                      # queries are the last T positions
    paid = np.abs(probs).max(axis=0) > WEIGHT                   # (T, S)
    widest = 0
    for t in range(tokens):
        seen = np.flatnonzero(paid[t, : t + offset + 1])
        if len(seen):
            widest = max(widest, t + offset - int(seen[0]) + 1)
    return widest


def _windows(context: Context) -> list | None:
    architecture = context.reference.metadata.get("architecture")
    layers = architecture.get("layers") if isinstance(architecture, dict) else None
    return [layer.get("sliding_window") for layer in layers] if isinstance(layers, list) else None


@register("sliding_window")
def sliding_window(context: Context):
    windows = _windows(context)
    for name, checkpoint, reference, candidate in context.focused("attn_probs"):
        result = context.comparison.result(name)
        if reference.ndim != 3 or result is None or not result.failed:
            continue
        window = windows[checkpoint.layer] if windows and checkpoint.layer < len(windows) else None
        tokens = reference.shape[1]
        reference_reach, candidate_reach = reach(reference), reach(candidate)
        if candidate_reach == reference_reach:
            continue
        if window is not None and reference_reach == min(window, tokens):
            yield Diagnosis("sliding_window", name,
                            f"layer {checkpoint.layer} is a sliding-window layer (window {window}): each query of the "
                            f"reference sees at most {reference_reach} keys, the candidate's up to {candidate_reach}"
                            f"{_off_by_one(window, candidate_reach, tokens)}")
        elif window is None and candidate_reach < reference_reach == tokens:
            yield Diagnosis("sliding_window", name,
                            f"layer {checkpoint.layer} is a global layer, but the candidate limits each query to "
                            f"{candidate_reach} keys: a sliding window applied where the model has none")


def _off_by_one(window: int, candidate_reach: int, tokens: int) -> str:
    if abs(candidate_reach - window) == 1:
        return ": the window mask is off by one (key s is visible from query t when t - window < s <= t)"
    if candidate_reach == tokens:
        return ": the window is not applied"
    return ""
