"""weight_mismatch: when both traces carry the weights, the first that differ, and how."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

from parity.core.metrics import rel_l2
from parity.core.names import in_flow_order, weight_of
from parity.core.results import Diagnosis
from parity.diagnose import register
from parity.diagnose.context import Context, widened

SAME = 1e-6  # weights loaded from one file agree to float32 conversion ...
ROUNDED = {"float16": 1e-3, "bfloat16": 8e-3}  # ... or to one rounding to a lower precision (rel_l2 of it)


def differing(context: Context) -> Iterator[str]:
    """The weights both traces hold that are not the reference's (by shape, or by more than a conversion to the
    lower of the two dtypes rounds), in flow order."""
    for name in _shared(context):
        shapes = context.reference.shape_of(name), context.candidate.shape_of(name)
        if shapes[0] != shapes[1]:
            yield name
            continue
        same = max([SAME] + [ROUNDED.get(trace.dtype_of(name), 0.0) for trace in (context.reference, context.candidate)])
        if rel_l2(widened(context.reference[name]), widened(context.candidate[name])) > same:
            yield name


def _shared(context: Context) -> list[str]:
    return [name for name in in_flow_order(set(context.reference.tensors) & set(context.candidate.tensors))
            if weight_of(name) is not None]


@register("weight_mismatch")
def weight_mismatch(context: Context):
    for name in _shared(context):
        shapes = context.reference.shape_of(name), context.candidate.shape_of(name)
        if shapes[0] != shapes[1] and shapes[1] != shapes[0][::-1]:  # decided from the headers, nothing read
            checkpoint, parameter = weight_of(name)
            yield Diagnosis("weight_mismatch", checkpoint,
                            f"the candidate's {parameter} for {checkpoint} is not the reference's: shape "
                            f"{list(shapes[1])} where the reference's is {list(shapes[0])}; "
                            "it loaded other weights or converted them wrongly")
            return
        reference = widened(context.reference[name])
        candidate = widened(context.candidate[name])
        same = max([SAME] + [ROUNDED.get(trace.dtype_of(name), 0.0) for trace in (context.reference, context.candidate)])
        how = _how_they_differ(reference, candidate, same)
        if how is not None:
            checkpoint, parameter = weight_of(name)
            yield Diagnosis("weight_mismatch", checkpoint,
                            f"the candidate's {parameter} for {checkpoint} is not the reference's: {how}; "
                            "it loaded other weights or converted them wrongly")
            return


def _how_they_differ(reference: np.ndarray, candidate: np.ndarray, same: float = SAME) -> str | None:
    if reference.shape == candidate.shape and rel_l2(reference, candidate) <= same:
        return None
    if reference.ndim == 2 and candidate.shape == reference.T.shape and rel_l2(reference.T, candidate) <= same:
        return f"it is transposed ({list(candidate.shape)} for {list(reference.shape)})"
    if reference.shape != candidate.shape:
        return f"shape {list(candidate.shape)} where the reference's is {list(reference.shape)}"
    if rel_l2(-reference, candidate) <= same:
        return "it is negated"
    denominator = float(np.sum(reference * reference))
    factor = float(np.sum(candidate * reference)) / denominator if denominator else 0.0
    if factor and rel_l2(factor * reference, candidate) <= same:
        return f"it is scaled by {factor:.4g}"
    return f"rel_l2 {rel_l2(reference, candidate):.3g} between them"
