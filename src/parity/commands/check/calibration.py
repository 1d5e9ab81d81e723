"""Calibration: the reference run once more at the candidate's precision, and the noise floors it gives.

The candidate says what its precision is (`candidate.numerics`, capture/precision.py):
a dtype, whose run is the reference loaded in it, or llama.cpp's numerics, emulated in a
float32 copy. Each checkpoint of that run, against the high-precision reference, is the
noise this precision alone makes there (core/calibrate.py).
"""

from __future__ import annotations

from parity.core.calibrate import check_same_tokens, noise_floors
from parity.core.compare import CompareConfig
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
        if spill is None or size <= SPILL_BYTES:
            lowp = lowp_model.capture(reference.tokens, checkpoints=options.checkpoints, raw=raw,
                                      start_position=options.start_position, **tracing)
        else:
            path = Path(spill) / "calibration.safetensors"
            lowp_model.capture_to_file(reference.tokens, path, checkpoints=options.checkpoints, raw=raw,
                                       start_position=options.start_position, **tracing)
            lowp = load_trace(path)
    del lowp_model           # the copy goes before the pages it freed are handed back
    reference_model.rest()
    check_same_tokens(reference, lowp)
    return CompareConfig(tolerance=config.tolerance, checkpoints=config.checkpoints,
                         noise=noise_floors(reference, lowp, also=stream.noise_floors() if stream else None),
                         noise_dtype=numerics.dtype,
                         noise_label=numerics.label)
