"""Introduced vs inherited error: which op added the error, not only where it first shows.

A checkpoint's error has two parts: what its inputs already carried, passed on
with some gain, and what its own op added. With a calibration run, the gain is
measured: how much this step amplifies the noise of its inputs in the reference's
own low-precision run. Without one, the gain is taken as 1 (norms, matmuls and
activations pass relative error on roughly unchanged).

    inherited  = gain * max(rel_l2 of the inputs)
    introduced = max(0, rel_l2 - inherited)

The origin of a divergence is the first checkpoint, in data-flow order, whose
introduced error exceeds what its tolerance allows.
"""

from __future__ import annotations

from collections.abc import Mapping

from parity.core.names import inputs_of
from parity.core.results import Attribution, CheckpointResult, NoiseFloor


def attribute(results: tuple[CheckpointResult, ...], noise: Mapping[str, NoiseFloor] | None = None) -> dict[str, Attribution]:
    errors = {r.name: r.metrics.rel_l2 for r in results if r.metrics is not None}
    attributions = {}
    for name, error in errors.items():
        inputs = tuple(inputs_of(name, errors))
        inherited = max((errors[i] for i in inputs), default=0.0)
        gain = _gain(name, inputs, noise)
        passed_on = gain * inherited
        attributions[name] = Attribution(passed_on, max(0.0, error - passed_on), gain, inputs)
    return attributions


def _gain(name: str, inputs: tuple[str, ...], noise: Mapping[str, NoiseFloor] | None) -> float:
    """How much this step amplifies its inputs' noise in the reference's own low-precision run (>= 1)."""
    if not noise or name not in noise or not inputs or any(i not in noise for i in inputs):
        return 1.0
    inherited = max(noise[i].rel_l2 for i in inputs)
    return max(1.0, noise[name].rel_l2 / inherited) if inherited > 0 else 1.0


def origin(results: tuple[CheckpointResult, ...], attributions: Mapping[str, Attribution]) -> str | None:
    """The first checkpoint whose own op adds more error than its tolerance allows."""
    for result in results:
        attribution = attributions.get(result.name)
        if attribution is None or result.tolerance is None:
            continue
        if attribution.introduced_rel_l2 > result.tolerance.rel_l2_allowance(result.metrics):
            return result.name
    return None
