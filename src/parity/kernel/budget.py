"""How much memory one kernel case needs, known before any of it is allocated.

A case's inputs and output grow with the length T as a polynomial of degree 2 at
most (softmax and masks are T x T): their size is fitted exactly from the cases at T = 1, 2, 3
(a few KB) and extrapolated with Python's integers, so 2^70 is a number, not an
overflow. A case holds its inputs about HELD_TIMES over (float64 references at
three precisions and the candidate, each with its inputs' copies, outputs and
gradients); attention also makes its B x H x T x T scores, several times. A case
over the free memory is refused in one line, before anything is made.
"""

from __future__ import annotations

import torch

from parity.core.errors import OptionError
from parity.core.isolation import available_memory_bytes

HELD_TIMES = 20          # inputs' and outputs' copies and gradients of the four runs of a case, with slack
SCORE_COPIES = 4         # attention: scores, probabilities and their gradients, in float64
SHARE_OF_FREE = 0.8      # leave the rest to the process and the system


def case_bytes(op, length: int) -> int:
    """The memory one case of `op` at `length` holds at its peak (an estimate, from above)."""
    sizes = [_input_bytes(op, t) for t in (1, 2, 3)]
    quadratic = (sizes[2] - 2 * sizes[1] + sizes[0]) // 2
    linear = sizes[1] - sizes[0] - 3 * quadratic
    constant = sizes[0] - quadratic - linear
    inputs = quadratic * length * length + linear * length + constant
    scores = 0
    if op.name == "attention":
        from parity.kernel.ops import B, H

        scores = SCORE_COPIES * B * H * length * length * 8
    return HELD_TIMES * max(inputs, 0) + scores


def check_memory(op, lengths, device: str) -> None:
    """Refuse the longest length when one case of it would not fit in the free memory."""
    longest = max(lengths)
    needed = case_bytes(op, longest)
    free = available_memory_bytes(device)
    if needed > SHARE_OF_FREE * free:
        raise OptionError(f"--lengths {_number(longest)}: one {op.name} case at T = {_number(longest)} needs about "
                          f"{_size(needed)} (its inputs held about {HELD_TIMES} times over), more than the "
                          f"{_size(free)} free on {device}; give shorter lengths")


def _input_bytes(op, length: int) -> int:
    """The case's inputs and the reference's output at `length`, in float64 (ids in int64)."""
    case = op.make(length, "extreme", torch.Generator().manual_seed(0))
    args, kwargs = op.arguments(case, case.inputs)
    with torch.no_grad():
        output = op.reference(*args, **kwargs)
    return sum(tensor.numel() * 8 for tensor in case.inputs.values()) + output.numel() * 8


def _number(value: int) -> str:
    return f"{value:,}" if value < 10**12 else f"{value:.3g}"


def _size(size_bytes: int) -> str:
    return f"{size_bytes / 2**30:,.1f} GiB" if size_bytes < 2**80 else f"{float(size_bytes):.3g} bytes"
