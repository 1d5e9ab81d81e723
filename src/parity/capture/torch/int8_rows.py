"""int8 weights and activations with a scale per row, emulated in a float model.

What an engine's int8 mode computes (CTranslate2's `int8`, `int8_float32`): each Linear's weight
quantized to int8 with one scale per output row, and its input quantized the same way per row (each
token's vector), both symmetric (scale = absmax / 127, rounded to nearest), the product taken on the
integers and scaled back. In floats that is the product of the two rounded tensors, which is what this
emulates: a measure of the error such a build makes, not a bit-exact copy of any engine's kernels.
"""

from __future__ import annotations

from contextlib import contextmanager

LEVELS = 127


def round_rows(x):
    """`x` rounded to int8 with a scale per row (its last axis), symmetric: round(x / s) * s, s = absmax / 127."""
    import torch

    scale = x.abs().amax(dim=-1, keepdim=True) / LEVELS
    scale = torch.where(scale == 0, torch.ones_like(scale), scale)
    return torch.round(x / scale).clamp(-LEVELS, LEVELS) * scale


@contextmanager
def int8_rows(model):
    """While active, every torch.nn.Linear of `model` computes with its weight and its input rounded by
    `round_rows`; the weights are restored after."""
    import torch

    linears = [module for module in model.modules() if isinstance(module, torch.nn.Linear)]
    kept = [module.weight.data for module in linears]
    handles = []
    try:
        with torch.no_grad():
            for module in linears:
                module.weight.data = round_rows(module.weight.data)      # (out, in): a scale per output row
                handles.append(module.register_forward_pre_hook(
                    lambda _module, args: (round_rows(args[0]), *args[1:])))
        yield len(linears)
    finally:
        for handle in handles:
            handle.remove()
        for module, weight in zip(linears, kept):
            module.weight.data = weight
