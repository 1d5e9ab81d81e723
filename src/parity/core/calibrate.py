"""Tolerances calibrated to the noise floor of the candidate's precision.

Three traces over the same tokens:
  REF       the reference at high precision (float64, or float32 for a quantized candidate);
  REF_LOWP  the same reference run at the candidate's precision (bfloat16, or with
            llama.cpp's activation quantization emulated);
  CAND      the candidate.
At every checkpoint, the error of REF_LOWP against REF is what this precision
alone costs there: the noise floor. The candidate passes a checkpoint when

    rel_l2(CAND, REF)            <= MULTIPLE * rel_l2(REF_LOWP, REF)            + FLOOR[dtype]
    worst position's rel_l2      <= MULTIPLE * worst position's rel_l2 of noise + FLOOR[dtype]

Rounding is random: two implementations at one precision land at different
points of the same cloud, each about one noise radius from the exact value, so
their errors differ by a small factor; a bug adds error of its own, many times
the noise. The floor keeps a checkpoint that this precision computes exactly
(an embedding lookup) from demanding exactness of the candidate.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from parity.core.metrics import NORMS_ONLY, channel_weighted_position_rel_l2, measure_pair
from parity.core.names import INDEX_KINDS, Checkpoint, parse
from parity.core.results import NoiseFloor, Tolerance
from parity.core.tolerances import PRECISIONS, calibration_floor
from parity.core.trace import Trace

MULTIPLE = 3.0
# rel_l2 allowed where the precision alone costs nothing: the calibration_floor column of core/tolerances.py
FLOOR: dict[str, float] = {dtype: row.calibration_floor for dtype, row in PRECISIONS.items()}


def noise_floors(reference: Trace, reference_lowp: Trace,
                 also: dict[str, NoiseFloor] | None = None) -> dict[str, NoiseFloor]:
    """Per checkpoint, the error of the low-precision reference run against the reference (`also`: floors
    measured as the run made them, core/streamed.py)."""
    floors = dict(also or {})
    for name in reference.names:
        if name not in reference_lowp or reference[name].shape != reference_lowp[name].shape:
            continue
        floors[name] = noise_floor(name, reference[name], reference_lowp[name])
        checkpoint = parse(name)
        if checkpoint is not None and checkpoint.kind in INDEX_KINDS:   # the low-precision run's own routing
            chosen = np.asarray(reference_lowp[name]).astype(np.int64)
            floors[name] = dataclasses.replace(floors[name], chosen=tuple(
                tuple(sorted(row)) for row in chosen.reshape(len(chosen), -1).tolist()))
    return without_dips(floors)


def without_dips(floors: dict[str, NoiseFloor]) -> dict[str, NoiseFloor]:
    """Each layer's floor raised to the median of its own and its two neighbours' of the same kind.

    One run's noise at a layer can dip far below its neighbours' (rounding that happens to cancel
    there: SmolLM2's layers.12.out measured 7.7e-5 between 3.6e-4 and 1.8e-4), and a bound three
    times that dip fails a correct candidate whose rounding does not cancel. The median of three
    lifts a dip to the lower of its neighbours and leaves a floor that rises or falls with depth as
    it is: nothing is loosened except a dip.
    """
    by_kind: dict[str, dict[int, str]] = {}
    for name in floors:
        checkpoint = parse(name)
        if checkpoint is not None and checkpoint.layer is not None:
            by_kind.setdefault(checkpoint.kind, {})[checkpoint.layer] = name
    smoothed = dict(floors)
    for layers in by_kind.values():
        for layer, name in layers.items():
            around = [floors[layers[i]] for i in (layer - 1, layer + 1) if i in layers]
            if len(around) < 2:
                continue
            own = floors[name]
            values = [own] + around
            smoothed[name] = dataclasses.replace(
                own, rel_l2=max(own.rel_l2, _median(v.rel_l2 for v in values)),
                position_rel_l2=max(own.position_rel_l2, _median(v.position_rel_l2 for v in values)))
    return smoothed


NEIGHBOURS = 4   # positions either side whose noise a position's decode bound also covers


def neighbourhood_max(noise: list[float], radius: int = NEIGHBOURS) -> list[float]:
    """Each position's noise raised to the largest within `radius` positions of it: one run's noise at a
    position dips where its rounding happens to cancel, and a candidate whose rounding does not is no less
    right there."""
    return [max(noise[max(0, p - radius):p + radius + 1]) for p in range(len(noise))]


def _median(values) -> float:
    ordered = sorted(values)
    return ordered[len(ordered) // 2]


def noise_floor(name: str, reference, reference_lowp) -> NoiseFloor:
    """The error of one checkpoint of the low-precision run against the reference's (numpy arrays, or
    torch tensors measured on their device)."""
    checkpoint = parse(name) or Checkpoint(name=name, kind=name)
    metrics = measure_pair(reference, reference_lowp, NORMS_ONLY, token_axis=checkpoint.token_axis).metrics
    weighted = channel_weighted_position_rel_l2(reference, reference_lowp, checkpoint.token_axis)
    return NoiseFloor(metrics.rel_l2, metrics.position_rel_l2, weighted, metrics.position_weighted_rel_l2)


def calibrated_tolerance(noise: NoiseFloor, dtype: str, label: str | None = None) -> Tolerance:
    """`dtype` sets the floor; `label` names the precision measured (default: the dtype)."""
    floor = calibration_floor(dtype)
    return Tolerance(
        atol=0.0,
        rtol=0.0,
        basis=f"calibrated: {MULTIPLE:g}x the noise of {label or dtype} + {floor:.2g}",
        max_rel_l2=MULTIPLE * noise.rel_l2 + floor,
        max_position_rel_l2=MULTIPLE * noise.position_rel_l2 + floor,
        noise_rel_l2=noise.rel_l2,
        max_channel_position_rel_l2=(None if noise.channel_position_rel_l2 is None
                                     else MULTIPLE * noise.channel_position_rel_l2 + floor),
        max_position_weighted_rel_l2=(None if noise.position_weighted_rel_l2 is None
                                      else MULTIPLE * noise.position_weighted_rel_l2 + floor),
    )


def check_same_tokens(reference: Trace, reference_lowp: Trace) -> None:
    from parity.core.errors import OptionError

    if reference.tokens is not None and reference_lowp.tokens is not None and reference.tokens != reference_lowp.tokens:
        raise OptionError(
            "the calibration trace was made from other token ids than the reference; "
            "capture both over the same --tokens or --prompt"
        )
