"""The attention mask fitted from the probabilities' zero pattern, and the softmax's normalization.

A masked softmax leaves exact zeros outside a band of keys: query t (at key position
t + S - T) sees keys from t - window + 1 up to t + ahead. Both sides' bands are fitted
from their own probabilities: `ahead` 0 and the window of the layer for a correct
causal mask. Only rows that are finite and sum to 1 along the keys are read, and
a pattern with zeros inside its own band is no mask at all (exp() underflowing or a
float16 overflow makes zeros too): then nothing is fitted, and nothing is named.

softmax_normalization: the probabilities must sum to 1 along the keys, as the
reference's do; when the candidate's do not, which axis they do sum to 1 along
(the queries: a softmax over the wrong dim) or what constant they sum to is fitted.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from parity.core.metrics import rel_l2
from parity.core.results import Diagnosis
from parity.diagnose import register
from parity.diagnose.bands import NORMALIZED, Band, fit_band, normalized_rows, renormalized
from parity.diagnose.context import Context, layer_facts
from parity.diagnose.repair import confirm

RESCALED_SHARE = 0.5    # rows divided by their sums must leave at most this share of the error ...
FAR_FROM_ONE = 0.05     # ... or some row sum further than this from 1 (and than 10x the dtype's tolerance)


@dataclass(frozen=True)
class MaskFinding:
    name: str
    layer: int
    reference: Band
    candidate: Band
    window: int | None       # the window the trace records for the layer


def mask_findings(context: Context) -> list[MaskFinding]:
    return context.remember("masks", lambda: list(_mask_findings(context)))


def _mask_findings(context: Context):
    for name, checkpoint, reference, candidate in context.focused("attn_probs"):
        result = context.comparison.result(name)
        if reference.ndim != 3 or result is None or not result.failed:
            continue
        reference_band = fit_band(reference, context.reference.dtypes.get(name))
        candidate_band = fit_band(candidate, context.candidate.dtypes.get(name))
        if reference_band is None or candidate_band is None:
            continue
        window = layer_facts(context.config, checkpoint.layer).get("sliding_window")
        yield MaskFinding(name, checkpoint.layer, reference_band, candidate_band, window)


def _repaired(context: Context, finding: MaskFinding, candidate: np.ndarray) -> np.ndarray | None:
    """The candidate's probabilities redrawn with the reference's mask: where the candidate sees more keys,
    its rows without them, renormalized (a softmax restricted to fewer keys is exactly that)."""
    wider = finding.candidate.visible() | finding.reference.visible()
    if np.array_equal(wider, finding.candidate.visible()):
        return renormalized(candidate, finding.reference.visible())
    return None   # the candidate hid keys the reference sees: their weights cannot be recovered from it


@register("causal_mask")
def causal_mask(context: Context):
    """Keys past the query's own position attended (or its own hidden): the band's top edge differs."""
    for finding in mask_findings(context):
        if finding.candidate.ahead == finding.reference.ahead:
            continue
        ahead = finding.candidate.ahead - finding.reference.ahead
        if finding.candidate.ahead >= finding.candidate.keys - 1:
            what = "every query sees every key: the causal mask is missing (is_causal=False, or no mask passed)"
        elif abs(ahead) == 1:
            what = (f"the causal mask is off by one: each query sees {'the next key too' if ahead > 0 else 'only keys before itself'}"
                    " (triu(ones, diagonal) with another diagonal)")
        else:
            what = f"the causal mask is shifted by {ahead} keys"
        diagnosis = Diagnosis("causal_mask", finding.name,
                              f"fitted from the probabilities' zero pattern: in the candidate {finding.candidate.describe()}; "
                              f"in the reference {finding.reference.describe()}: {what}")
        yield confirm(context, diagnosis, _repaired(context, finding, context.pair(finding.name)[1]),
                      "dropping the keys the reference masks and renormalizing each row")
        return
    from parity.diagnose.attention_math import masks_from_context

    yield from masks_from_context(context, "causal_mask")  # only attn_ctx visible (a fused kernel, softmax inline)


@register("sliding_window")
def sliding_window(context: Context):
    """A local layer attends over a window of another width (or a global one over a window)."""
    for finding in mask_findings(context):
        reference, candidate = finding.reference, finding.candidate
        if candidate.window == reference.window:
            continue
        tokens = reference.queries
        reference_reach, candidate_reach = min(reference.window, tokens), min(candidate.window, tokens)
        if reference_reach == candidate_reach:
            continue
        if finding.window is not None and reference_reach == min(finding.window, tokens):
            message = (f"layer {finding.layer} is a sliding-window layer (window {finding.window}): each query of the "
                       f"reference sees at most {reference_reach} keys, the candidate's up to {candidate_reach}"
                       f"{_off_by_one(finding.window, candidate_reach, tokens)}")
        elif reference_reach >= tokens and candidate_reach < tokens:
            message = (f"layer {finding.layer} is a global layer, but the candidate limits each query to "
                       f"{candidate_reach} keys: a sliding window applied where the model has none")
        else:
            message = (f"each query of the reference sees at most {reference_reach} keys, the candidate's up to "
                       f"{candidate_reach} (fitted from the probabilities' zero patterns)")
        diagnosis = Diagnosis("sliding_window", finding.name, message)
        yield confirm(context, diagnosis, _repaired(context, finding, context.pair(finding.name)[1]),
                      "dropping the keys the reference masks and renormalizing each row")
    from parity.diagnose.attention_math import masks_from_context

    yield from masks_from_context(context, "sliding_window")  # only attn_ctx visible


def _off_by_one(window: int, candidate_reach: int, tokens: int) -> str:
    if abs(candidate_reach - window) == 1:
        return ": the window mask is off by one (key s is visible from query t when t - window < s <= t)"
    if candidate_reach == tokens:
        return ": the window is not applied"
    return ""


@register("softmax_normalization")
def softmax_normalization(context: Context):
    """The probabilities do not sum to 1 along the keys, where the reference's do, and that is where the error
    comes from: they sum to 1 along the queries (the wrong axis), or dividing each row by its sum removes most
    of the error (a scale after the softmax, a sink in its denominator). Row sums a little off from rounding
    (a softmax taken in float16) are not this."""
    for name, _, reference, candidate in context.focused("attn_probs"):
        if reference.ndim != 3 or not np.all(np.isfinite(candidate)):
            continue   # non-finite probabilities are nonfinite's to explain
        tolerance = NORMALIZED.get(context.candidate.dtypes.get(name) or "float32", 1e-4)
        if not normalized_rows(reference, context.reference.dtypes.get(name)).all():
            continue
        row_sums = candidate.sum(-1)                                          # (H, T)
        if np.max(np.abs(row_sums - 1)) <= tolerance:
            continue
        column_sums = candidate.sum(-2)                                       # (H, S)
        if np.max(np.abs(column_sums - 1)) <= tolerance:
            yield Diagnosis("softmax_normalization", name,
                            "the candidate's probabilities do not sum to 1 along the keys, where the reference's do: "
                            "they sum to 1 along the queries instead: the softmax is taken over the wrong axis "
                            "(dim=-2, or the scores transposed before it)")
            return
        rescaled = candidate / np.where(row_sums == 0, 1.0, row_sums)[..., None]
        error, left = rel_l2(reference, candidate), rel_l2(reference, rescaled)
        far = np.max(np.abs(row_sums - 1)) > max(FAR_FROM_ONE, 10 * tolerance)   # no rounding strays this far
        if left > RESCALED_SHARE * error and not far:
            continue
        if np.ptp(row_sums) <= tolerance * max(1.0, float(np.mean(row_sums))):
            what = f"every row sums to {float(np.mean(row_sums)):.4g}: the probabilities are scaled after the softmax"
        else:
            what = (f"the row sums range from {row_sums.min():.3g} to {row_sums.max():.3g}: they are not normalized "
                    "along the keys (a term added to the softmax's denominator, exp() divided by another sum)")
        diagnosis = Diagnosis("softmax_normalization", name,
                              f"the candidate's probabilities do not sum to 1 along the keys, where the reference's do: "
                              f"{what}; dividing each row by its sum leaves rel_l2 {left:.2g} of {error:.2g}")
        yield confirm(context, diagnosis, rescaled, "dividing each row by its sum")
        return
    from parity.diagnose.attention_math import softmax_from_context

    yield from softmax_from_context(context)  # only attn_ctx visible
