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
    """While active, the rotary modules of `model` (a torch module: those holding `inv_freq` or one frequency
    buffer per kind of layer, as Gemma 3's) compute in float64."""
    from parity.capture.hf.rope_frequencies import frequency_buffers

    wrapped = []
    try:
        for module in model.modules():
            if frequency_buffers(module) and "forward" not in vars(module):
                module.forward = _widened(module.forward)
                wrapped.append(module)
        yield model
    finally:
        for module in wrapped:
            del module.forward


def _widened(forward):
    """`forward` with its float32 casts (`Tensor.float()`, `Tensor.to(torch.float32)`) giving float64 for the
    length of each call. A rotary module that then mixes float32 made otherwise with float64 runs as it is."""
    import torch

    def widened_forward(*args, **kwargs):
        narrowing = torch.Tensor.float, torch.Tensor.to
        torch.Tensor.float, torch.Tensor.to = _as_float64, _to_widened(narrowing[1])
        try:
            return forward(*args, **kwargs)
        except RuntimeError:           # its own float32 tensors met widened ones: its tables as they are
            torch.Tensor.float, torch.Tensor.to = narrowing
            return forward(*args, **kwargs)
        finally:
            torch.Tensor.float, torch.Tensor.to = narrowing

    return widened_forward


def _as_float64(tensor, memory_format=None):
    import torch

    return tensor.double(memory_format=memory_format or torch.preserve_format)


def _to_widened(to):
    """Tensor.to with float32 asked for read as float64."""
    import torch

    def widened_to(tensor, *args, **kwargs):
        args = tuple(torch.float64 if argument is torch.float32 else argument for argument in args)
        if kwargs.get("dtype") is torch.float32:
            kwargs["dtype"] = torch.float64
        return to(tensor, *args, **kwargs)

    return widened_to
