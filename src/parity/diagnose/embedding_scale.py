"""embedding_scale: the embedding was not scaled (or scaled twice, or by another factor).

Gemma multiplies the looked-up rows by sqrt(hidden_size), Granite by
embedding_multiplier; a port that forgets it fails at `embed` with a constant
ratio, while the lookup itself (`embed_tokens`, where both traces hold it) agrees.
"""

from __future__ import annotations

import numpy as np

from parity.core.metrics import rel_l2
from parity.core.results import Diagnosis
from parity.diagnose import register
from parity.diagnose.context import Context, matches

RATIO_CLOSE = 0.01  # the measured ratio must be within 1% of the scale's power to name it


def _embed_scale(context: Context) -> float | None:
    architecture = context.reference.metadata.get("architecture")
    scale = architecture.get("embed_scale") if isinstance(architecture, dict) else None
    return float(scale) if isinstance(scale, (int, float)) and scale not in (0, 1) else None


@register("embedding_scale")
def embedding_scale(context: Context):
    scale = _embed_scale(context)
    result = context.comparison.result("embed")
    pair = context.pair("embed")
    if scale is None or result is None or not result.failed or pair is None:
        return
    lookup = context.pair("embed_tokens")
    if lookup is not None and rel_l2(*lookup) > 1e-3:
        return  # the table itself differs: a weights problem, not the scale
    reference, candidate = pair
    denominator = float(np.sum(reference * reference))
    if denominator == 0:
        return
    ratio = float(np.sum(candidate * reference)) / denominator
    for power, what in ((-1, "not multiplied by"), (1, "multiplied twice by")):
        expected = scale ** power
        if abs(ratio / expected - 1) < RATIO_CLOSE and matches(candidate, expected * reference, reference) is not None:
            yield Diagnosis("embedding_scale", "embed",
                            f"the candidate's embeddings are the reference's times {ratio:.4g}: {what} the "
                            f"embedding scale {scale:.4g} (Gemma: sqrt(hidden_size); Granite: embedding_multiplier)")
            return
