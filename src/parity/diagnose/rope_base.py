"""rope_theta: q or k rotated with another RoPE base frequency than the reference's.

A common conversion mistake: the base left at Llama 2's 10000 where the model says
500000 (Llama 3) or 1000000 (Qwen2, CodeLlama), or a rope_theta read from the wrong
config field. The base is fitted from the reference's own input to RoPE, and is
named only when rotating with it reproduces the candidate.
"""

from __future__ import annotations

import math

import numpy as np

from parity.core.results import Diagnosis
from parity.diagnose import register
from parity.diagnose.attention import _rope_focus, apply_rope
from parity.diagnose.context import Context, matches

THETA_RANGE = (1e2, 1e8)   # bases searched, log-spaced
THETA_STEPS = 161
THETA_SAME = 0.05          # a fitted base within 5% of the reference's is the reference's
KNOWN_BASES = {1e4: "10000 (Llama 2's default)", 5e5: "500000 (Llama 3)", 1e6: "1000000 (Qwen2, CodeLlama)"}


@register("rope_theta")
def rope_theta(context: Context):
    config = context.config
    for name, source, (reference, candidate) in _rope_focus(context):
        positions = np.arange(reference.shape[0])
        if reference.shape[0] < 3:
            continue

        def rotated(theta: float) -> np.ndarray:
            return apply_rope(source, config.head_dim, theta, positions, "half")

        grid = np.exp(np.linspace(math.log(THETA_RANGE[0]), math.log(THETA_RANGE[1]), THETA_STEPS))
        errors = [float(np.linalg.norm(rotated(theta) - candidate)) for theta in grid]
        theta = float(grid[int(np.argmin(errors))])
        if abs(theta / config.rope_theta - 1) <= THETA_SAME:
            continue
        residual = matches(candidate, rotated(theta), reference)
        if residual is None:
            continue
        known = next((label for base, label in KNOWN_BASES.items() if abs(theta / base - 1) <= 0.25), None)
        yield Diagnosis("rope_theta", name,
                        f"rotating the reference's input with a RoPE base of about {theta:.3g}"
                        f"{f', i.e. {known}' if known else ''} reproduces the candidate's {name} (rel error "
                        f"{residual:.2g}); the reference's base is {config.rope_theta:g}: the port reads rope_theta "
                        "from the wrong place or keeps a default")
        return
