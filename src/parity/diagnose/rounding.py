"""weight_rounding: the candidate computes with the reference's weights rounded to its file's format.

A GGUF made from the reference's model directory in F16, BF16 or a quantized
type holds rounded weights, so its tensors differ from the reference's from the
embedding on. When the candidate's trace carries the measured rounding of each
weight (`weight_rounding` metadata, written by `parity check` for llama.cpp
candidates whose reference is not the GGUF itself) and every rounded tensor is
as far from the reference's as its format makes it, the first divergence is
named as the weights' rounding, with the numbers. A tensor further off than its
format explains is a conversion error, and is said so instead.
"""

from __future__ import annotations

import math
from collections.abc import Iterator

from parity.core.results import Diagnosis
from parity.diagnose import register
from parity.diagnose.context import Context

AS_FORMAT = 1.5          # measured rounding up to this multiple of the format's own counts as that rounding
EXACT = 1e-7             # float32 tensors stored as they are


@register("weight_rounding")
def weight_rounding(context: Context) -> Iterator[Diagnosis]:
    tensors = context.candidate.metadata.get("weight_rounding") or []
    divergence = context.comparison.first_divergence
    rounded = [t for t in tensors if t["rel_l2"] > EXACT]
    if divergence is None or not rounded:
        return
    wrong = [t for t in rounded if math.isnan(t["expected_rel_l2"])
             or t["rel_l2"] > AS_FORMAT * t["expected_rel_l2"] + EXACT]
    if wrong:
        worst = max(wrong, key=lambda t: t["rel_l2"])
        yield Diagnosis("weight_rounding", divergence.checkpoint,
                        f"the candidate's weights differ from the reference's by more than their formats round: "
                        f"{_describe(worst)}; a conversion error, not rounding")
        return
    types = sorted({t["type"] for t in rounded})
    largest = sorted(rounded, key=lambda t: -t["rel_l2"])[:3]
    yield Diagnosis("weight_rounding", divergence.checkpoint,
                    f"the candidate computes with the reference's weights rounded to {'/'.join(types)}: "
                    f"{len(rounded)} of {len(tensors)} tensors, each as far as its format rounds "
                    f"(largest: {'; '.join(_describe(t) for t in largest)}); the difference starts in the weights. "
                    "To check the computation itself, take the GGUF as the reference")


def _describe(tensor: dict) -> str:
    return (f"{tensor['name']} {tensor['type']} rel_l2 {tensor['rel_l2']:.3g} "
            f"({tensor['type']} gives {tensor['expected_rel_l2']:.3g})")
