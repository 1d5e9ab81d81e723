"""weight_rounding: the candidate computes with the reference's weights rounded to its file's format.

A GGUF made from the reference's model directory in F16, BF16 or a quantized
type holds rounded weights, so its tensors differ from the reference's from the
embedding on. When the candidate's trace carries the measured rounding of each
weight (`weight_rounding` metadata, written by `parity check` for llama.cpp
candidates whose reference is not the GGUF itself) and every rounded tensor is
as far from the reference's as its format makes it, the first divergence is
named as the weights' rounding, with the numbers. A tensor further off than its
format explains is a conversion error, and is said so instead.

A quantized PyTorch build (torchao, torch.ao) is read the same way where its weights
were read (`--weights`, or the weights of a first divergence no other cause explains):
its trace's `quantized_weights` metadata gives each quantized parameter's format and
the error that rounding to its own grid gives (capture/torch/quantized.py), and each
read weight is held to that.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import NamedTuple

import numpy as np

from parity.core.metrics import rel_l2
from parity.core.names import in_flow_order
from parity.core.results import Diagnosis
from parity.diagnose import register
from parity.diagnose.context import Context, widened

AS_FORMAT = 1.5          # measured rounding up to this multiple of the format's own counts as that rounding
EXACT = 1e-7             # float32 tensors stored as they are


@register("weight_rounding")
def weight_rounding(context: Context) -> Iterator[Diagnosis]:
    yield from _file_rounding(context)
    yield from _quantized_weights(context)
    yield from _held_as_floats(context)


def _file_rounding(context: Context) -> Iterator[Diagnosis]:
    """A GGUF's tensors, measured by the llama.cpp candidate against the reference's model directory."""
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


def _quantized_weights(context: Context) -> Iterator[Diagnosis]:
    """A quantized PyTorch build's weights, read on both sides, each against the rounding its own grid gives."""
    measured = _read_quantized(context)
    if not measured or all(m.rel_l2 <= EXACT for m in measured):   # none read, or the reference's own (taken)
        return
    divergence = context.comparison.first_divergence
    wrong = [m for m in measured if m.grid_rel_l2 is not None and not on_grid(m.rel_l2, m.grid_rel_l2)]
    if wrong:
        yield Diagnosis("weight_rounding", divergence.checkpoint,
                        f"the candidate's quantized {_describe_quantized(wrong[0])}: further from the reference's "
                        "than rounding to its grid makes it; it quantized other weights or converted them wrongly")
        return
    graded = [m for m in measured if m.grid_rel_l2 is not None]
    largest = sorted(measured, key=lambda m: -m.rel_l2)[:2]
    unread = len(measured) - len(graded)
    how = ("as far from the reference's as rounding to its grid makes " + ("it" if len(measured) == 1 else "each")
           if not unread else f"{len(graded)} as far as their grid rounds, {unread} on a grid parity cannot read")
    yield Diagnosis("weight_rounding", divergence.checkpoint,
                    f"the candidate computes with the reference's weights quantized: {len(measured)} quantized "
                    f"weight{'s' if len(measured) > 1 else ''} read, {how} (largest: "
                    f"{'; '.join(_describe_quantized(m) for m in largest)}); the difference starts in the "
                    "quantization of its weights (`parity check --quantized-reference` runs the reference with them, "
                    "to check what it computes with them)")


def _held_as_floats(context: Context) -> Iterator[Diagnosis]:
    """The weights both traces hold that differ from the reference's, plain float tensors whose values lie on a
    quantization grid (diagnose/weight_grid.py): a quantized or float16 file converted as it loaded, each held
    to the rounding its grid gives. Nothing where the first that differs lies on no grid (weight_mismatch)."""
    from parity.diagnose.weight_grid import grid_of
    from parity.diagnose.weights import differing

    quantized = context.candidate.metadata.get("quantized_weights") or {}
    divergence = context.comparison.first_divergence
    if divergence is None or quantized:
        return
    measured: list[QuantizedWeight] = []
    for name in differing(context):
        grid = grid_of(widened(context.candidate[name]))
        if not measured and grid is None:
            return
        weight = QuantizedWeight(name, grid.describe() if grid else "",
                                 *grid_rounding(context.reference[name], context.candidate[name],
                                                grid.rounding_l2 if grid else None))
        if grid is None:
            yield Diagnosis("weight_rounding", divergence.checkpoint,
                            f"the candidate's {name} lies on no grid, while the weights before it lie on one; it "
                            "quantized other weights or converted them wrongly")
            return
        if not on_grid(weight.rel_l2, weight.grid_rel_l2):
            yield Diagnosis("weight_rounding", divergence.checkpoint,
                            f"the candidate's {_describe_quantized(weight)}: on a grid, but further from the "
                            "reference's than rounding to it makes it; it quantized other weights or converted them "
                            "wrongly")
            return
        measured.append(weight)
    if not measured:
        return
    largest = max(measured, key=lambda weight: weight.rel_l2)
    count = f"{len(measured)} weight{'s' if len(measured) > 1 else ''} that differ{'s' if len(measured) == 1 else ''}"
    yield Diagnosis("weight_rounding", divergence.checkpoint,
                    f"the candidate computes with the reference's weights rounded to a grid and held as float32 (a "
                    f"quantized or float16 file converted as it loaded): {count}, each as far from the reference's "
                    f"as rounding to its grid makes it (largest: {_describe_quantized(largest)}); the difference "
                    "starts in the rounding of its weights (`parity check --quantized-reference` runs the reference "
                    "with them, to check what it computes with them)")


@register("activation_quantization")
def activation_quantization(context: Context) -> Iterator[Diagnosis]:
    """The first divergence's op computes with the reference's weights (taken with --quantized-reference) and
    quantizes its input as it runs (torchao's dynamic-activation configs, torch.ao's dynamic quantization)."""
    measured = _read_quantized(context)
    if not measured or any(m.rel_l2 > EXACT for m in measured):
        return
    divergence = context.comparison.first_divergence
    quantized = context.candidate.metadata["quantized_weights"]
    owner = next((m.name for m in measured if m.name.startswith(f"{divergence.checkpoint}.")
                  and quantized[m.name].get("inputs")), None)
    if owner is None:
        return
    yield Diagnosis("activation_quantization", divergence.checkpoint,
                    f"{divergence.checkpoint} computes with the reference's weights but quantizes its input as it "
                    f"runs ({quantized[owner]['inputs']}; its weight {quantized[owner]['format']}): the difference "
                    "starts in the rounding of its activations, which the reference does not do")


class QuantizedWeight(NamedTuple):
    """One quantized weight both traces hold, measured against the reference's."""

    name: str
    format: str
    rel_l2: float
    grid_rel_l2: float | None   # what rounding to its grid gives; None where the grid is not known


def _read_quantized(context: Context) -> list[QuantizedWeight]:
    """Each quantized weight both traces hold, in flow order; none where nothing diverges."""
    quantized = context.candidate.metadata.get("quantized_weights") or {}
    if context.comparison.first_divergence is None:
        return []
    read = in_flow_order(set(quantized) & set(context.reference.tensors) & set(context.candidate.tensors))
    return [QuantizedWeight(name, quantized[name]["format"],
                            *grid_rounding(context.reference[name], context.candidate[name],
                                           quantized[name]["rounding_l2"]))
            for name in read]


def grid_rounding(reference, candidate, rounding_l2: float | None) -> tuple[float, float | None]:
    """(rel_l2 of a quantized weight against the reference's, the rel_l2 that rounding to its grid gives, or None
    where its grid is not known); a weight of another shape is infinitely far."""
    reference, candidate = widened(reference), widened(candidate)
    if reference.shape != candidate.shape:
        return math.inf, 0.0
    norm = float(np.linalg.norm(reference))
    return rel_l2(reference, candidate), None if rounding_l2 is None or not norm else rounding_l2 / norm


def on_grid(error: float, grid: float) -> bool:
    """Whether a weight's measured error is the rounding its grid gives."""
    return error <= AS_FORMAT * grid + EXACT


def _describe_quantized(weight: QuantizedWeight) -> str:
    given = ("its grid cannot be read" if weight.grid_rel_l2 is None
             else f"its grid gives {weight.grid_rel_l2:.3g}")
    return f"{weight.name} {weight.format} rel_l2 {weight.rel_l2:.3g} ({given})"
