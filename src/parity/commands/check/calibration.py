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


def calibrated(config: CompareConfig, reference: Trace, reference_model, candidate, options, progress) -> CompareConfig:
    """`config` with noise floors from a run of the reference at the candidate's precision."""
    numerics = candidate.numerics
    progress.step(f"calibrating: the reference in {numerics.label or numerics.dtype}")
    raw = options.raw and candidate.supports("raw") is None
    with numerics.reference(reference_model, options.placement) as lowp_model:
        lowp = lowp_model.capture(reference.tokens, checkpoints=options.checkpoints, raw=raw)
    check_same_tokens(reference, lowp)
    return CompareConfig(tolerance=config.tolerance, checkpoints=config.checkpoints,
                         noise=noise_floors(reference, lowp), noise_dtype=numerics.dtype,
                         noise_label=numerics.label)
