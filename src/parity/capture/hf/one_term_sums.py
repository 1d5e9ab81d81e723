"""float32 as a port computes it: the rounding of sums taken one term at a time, emulated.

The calibration run of a float32 candidate is the reference loaded in float32, and its
projections are PyTorch's BLAS: dot products summed in vector lanes and blocks, whose
partial sums stay small. A port that sums K terms one after another (a C loop:
llama2.c's `matmul`, most from-scratch C, Rust or Zig ports) rounds every partial sum,
and where one term dominates (a massive activation, hundreds of times its row's other
values) every partial sum after it is that large: about u * sqrt(K / 6) of the result,
several times what the blocked sum leaves. Measured on SmolLM2 over 256 tokens,
llama2.c's run.c differed from the float64 reference by up to 11.7x the blocked float32
run's noise at a position (a token with a massive activation in channel 507), twice it
elsewhere: a correct port failed.

While `one_term_sums(model)` is active, each projection's output (nn.Linear, GPT-2's
Conv1D) is moved by that rounding: each element y by y * e * (u / sqrt(3)) * sqrt(K / 2),
e standard normal, drawn from a generator seeded the same way in every run. Each
partial sum's rounding is uniform within half a unit in the last place (standard
deviation u / sqrt(3) of it) and, where the result is reached early, the K partial sums
are about y each: their sum in quadrature is that. Measured on the same run: the
candidate's worst position at most 1.1x the noise so calibrated; each checkpoint's
floor 3x the blocked one's (median). Bugs sit hundreds of times above float32's floor.
"""

from __future__ import annotations

import math
from contextlib import contextmanager

UNIT_ROUNDOFF = 2.0 ** -24     # float32
SEED = 0
_ELEMENTS = 1 << 22            # elements of an output moved at a time (16 MB of draws): no temporary of a long
                               # input's logits


@contextmanager
def one_term_sums(model):
    """While active, every projection of `model` (a torch module) rounds as a one-term-at-a-time sum would."""
    import torch

    generator = torch.Generator().manual_seed(SEED)
    handles = []
    try:
        for module in model.modules():
            width = projection_width(module)
            if width:
                handles.append(module.register_forward_hook(_moved_by(width, generator)))
        yield model
    finally:
        for handle in handles:
            handle.remove()


def _moved_by(width: int, generator):
    scale = UNIT_ROUNDOFF / math.sqrt(3) * math.sqrt(width / 2)

    def hook(_module, _inputs, output):
        import torch

        if not isinstance(output, torch.Tensor) or not output.is_floating_point():
            return None
        output = output.contiguous()
        with torch.no_grad():
            rows = output.view(-1, output.shape[-1])                               # (N, out)
            step = max(1, _ELEMENTS // rows.shape[1])
            for start in range(0, rows.shape[0], step):
                block = rows[start:start + step]
                draws = torch.randn(block.shape, generator=generator, dtype=torch.float32).to(block.device)
                block.add_(draws.mul_(block.abs()).mul_(scale))
        return output
    return hook


def projection_width(module) -> int | None:
    """The input width of a projection: nn.Linear, or transformers' Conv1D (GPT-2, stored (in, out))."""
    import torch

    if isinstance(module, torch.nn.Linear):
        return module.in_features
    if type(module).__name__ == "Conv1D" and getattr(module, "weight", None) is not None:
        return module.weight.shape[0]
    return None
