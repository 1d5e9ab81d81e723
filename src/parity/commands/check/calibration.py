"""Calibration: the reference run once more at the candidate's precision, and the noise floors it gives.

The candidate says what its precision is (`candidate.numerics`, capture/precision.py):
a dtype, whose run is the reference loaded in it, or llama.cpp's numerics, emulated in a
float32 copy. Each checkpoint of that run, against the high-precision reference, is the
noise this precision alone makes there (core/calibrate.py). An MoE token this run sends to
other experts than the reference does is sent to the reference's in a second run, so that no
floor carries another expert's output (`routed_as_reference`).
"""

from __future__ import annotations

from parity.commands.check.routing import MAX_ROUNDS, count_routed
from parity.core.calibrate import check_same_tokens, noise_floors
from parity.core.compare import CompareConfig
from parity.core.names import parse
from parity.core.trace import Trace


def calibrated(config: CompareConfig, reference: Trace, reference_model, candidate, options, progress,
               spill: str | None = None, recipes=None) -> CompareConfig:
    """`config` with noise floors from a run of the reference at the candidate's precision (its trace written
    to `spill` and read back a tensor at a time when it is larger than spill.SPILL_BYTES). With `recipes`
    (capture/hf/recipes.py), the probabilities they rebuild are measured as this run makes them
    (commands/check/probabilities.py)."""
    from parity.commands.check.probabilities import streamed
    from parity.core.metrics import NORMS_ONLY
    from pathlib import Path

    from parity.commands.check.spill import SPILL_BYTES, reference_trace_bytes
    from parity.core.trace import load_trace

    numerics = candidate.numerics
    progress.step(f"calibrating: the reference in {numerics.label or numerics.dtype}")
    raw = options.raw and candidate.supports("raw") is None
    stream = streamed(recipes, lambda name: NORMS_ONLY)
    tracing = {"stream": stream} if stream is not None else {}
    with numerics.reference(reference_model, options.placement) as lowp_model:
        reference_model.rest()   # a copy read the weights: a parked reference's pages go back
        size = reference_trace_bytes(lowp_model, len(reference.tokens), numerics.dtype, options.checkpoints)

        def capture(model, name: str = "calibration") -> Trace:
            if spill is None or size <= SPILL_BYTES:
                return model.capture(reference.tokens, checkpoints=options.checkpoints, raw=raw,
                                     start_position=options.start_position, **tracing)
            path = Path(spill) / f"{name}.safetensors"
            model.capture_to_file(reference.tokens, path, checkpoints=options.checkpoints, raw=raw,
                                  start_position=options.start_position, **tracing)
            return load_trace(path)

        lowp = capture(lowp_model)
        if stream is None:   # a streamed run's probabilities are measured once, as it makes them
            lowp = routed_as_reference(lowp, reference, lowp_model, capture, progress)
    del lowp_model           # the copy goes before the pages it freed are handed back
    reference_model.rest()
    check_same_tokens(reference, lowp)
    return CompareConfig(tolerance=config.tolerance, checkpoints=config.checkpoints,
                         noise=noise_floors(reference, lowp, also=stream.noise_floors() if stream else None),
                         noise_dtype=numerics.dtype,
                         noise_label=numerics.label)


def routed_as_reference(lowp: Trace, reference: Trace, lowp_model, capture, progress) -> Trace:
    """The calibration run with every token it routed otherwise than the reference, at any MoE layer, sent to the
    reference's experts (capture/torch/routed.py), its own choice kept as its moe_experts (NoiseFloor.chosen
    admits a candidate that routes as this precision routes). Without this, a flip of the calibration's is in
    every floor after it: a bfloat16 ERNIE-4.5-MoE whose calibration flipped three tokens in layer 1 had its
    logits held to rel_l2 0.31 where 0.025 holds without a flip. `capture(model, name)` runs it again."""
    from parity.capture.torch.routed import routed_as
    from parity.core.trace import with_arrays

    natural = {name: lowp[name] for name in lowp.names if _is_experts(name)}
    routes: dict[str, dict[int, tuple[int, ...]]] = {}
    for round_ in range(MAX_ROUNDS):
        found = _otherwise_routed(lowp, reference, routes)
        if not found:
            break
        for name, tokens in found.items():
            routes.setdefault(name, {}).update(tokens)
        progress.step(f"calibrating: {count_routed(routes)} token(s) this precision routed to other "
                      "experts, run again routed as the reference, so that no floor carries another expert's output")
        with routed_as(lowp_model.model, lowp_model.mapping.taps, routes):
            lowp = capture(lowp_model, f"calibration-routed-{round_ + 1}")
    if not routes:
        return lowp
    return with_arrays(lowp, natural)


def _is_experts(name: str) -> bool:
    checkpoint = parse(name)
    return checkpoint is not None and checkpoint.kind == "moe_experts"


def _otherwise_routed(lowp: Trace, reference: Trace, routes) -> dict[str, dict[int, tuple[int, ...]]]:
    """{experts checkpoint: {token: the reference's experts}} where the run chose otherwise and was not yet sent."""
    import numpy as np

    found = {}
    for name in lowp.names:
        if not _is_experts(name) or name not in reference:
            continue
        chosen_here = np.asarray(lowp[name]).reshape(-1, lowp[name].shape[-1])
        chosen_there = np.asarray(reference[name]).reshape(-1, reference[name].shape[-1])
        if chosen_here.shape != chosen_there.shape:
            continue
        tokens = {int(t): tuple(int(e) for e in sorted(chosen_there[t])) for t in range(len(chosen_there))
                  if set(chosen_here[t].tolist()) != set(chosen_there[t].tolist()) and t not in routes.get(name, {})}
        if tokens:
            found[name] = tokens
    return found
