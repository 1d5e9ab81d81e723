"""RoPE's angles and tables computed in float64, where transformers computes them in float32.

transformers' rotary modules cast their frequencies and positions to float32 (`.float()`,
autocast off) even in a float64 model, so the float64 reference's q and k after RoPE carry
float32's rounding of the angles p * f and of cos and sin. A float64 port that computes
them in float64 (or in float32 its own way) differs from the reference by that rounding:
4e-8 at q_rope over 16 tokens, 40x the 1e-9 float64 was held to before. While `float64_tables(model)`
is active, each rotary module's forward computes in float64 (its `.float()` casts widen to
float64 for the call); the calibration of a float64 candidate runs so, and its distance
from the reference is that rounding, measured at every position.
"""

from __future__ import annotations

from contextlib import contextmanager


@contextmanager
def float64_tables(model):
    """While active, the rotary modules of `model` (a torch module: those holding `inv_freq`) compute in float64."""
    import torch

    wrapped = []
    try:
        for module in model.modules():
            if isinstance(getattr(module, "inv_freq", None), torch.Tensor) and "forward" not in vars(module):
                module.forward = _widened(module.forward)
                wrapped.append(module)
        yield model
    finally:
        for module in wrapped:
            del module.forward


def _widened(forward):
    """`forward` with Tensor.float() giving float64 for the length of each call."""
    import torch

    def widened_forward(*args, **kwargs):
        narrowing = torch.Tensor.float
        torch.Tensor.float = _as_float64
        try:
            return forward(*args, **kwargs)
        finally:
            torch.Tensor.float = narrowing

    return widened_forward


def _as_float64(tensor, memory_format=None):
    import torch

    return tensor.double(memory_format=memory_format or torch.preserve_format)
