"""--quantized-reference: the reference computes with a quantized build's weights, to check what it computes.

A quantized PyTorch build (torchao, torch.ao) differs from the float reference from its
first projection on, by its weights' rounding; that difference is the quantization's, and
it hides whatever the build computes wrongly with them (a kernel that applies a scale to
the wrong rows, a dequantization off by one block). With this option the candidate's
quantized weights are read (as float values, capture/torch/quantized.py) and the
reference computes with them in place of its own, and its calibration copy too: what is
left to compare is the computation. Only weights that are the reference's rounded to
their own grid are taken (diagnose/rounding.py); one further off is a conversion error,
left as the reference's so that the check fails there and says so.
"""

from __future__ import annotations

import dataclasses

from parity.core.errors import OptionError


def take_quantized_weights(reference_model, candidate, tokens: list[int], options, progress) -> str:
    """Give the reference the candidate's quantized weights that are its own rounded to their grid; the note that
    says what was taken and what was left."""
    from parity.core.names import weight_of
    from parity.diagnose.rounding import grid_rounding, on_grid

    reason = candidate.supports("weights")
    if reason is not None:
        raise OptionError(f"--quantized-reference reads the candidate's weights, and {candidate.description} gives "
                          f"none ({reason}); give a PyTorch module or leave the option out")
    if options.placement is not None and options.placement.offloads:
        raise OptionError("--quantized-reference writes the candidate's weights into the reference, which an "
                          "offloaded reference does not hold in memory; leave out --max-memory/--offload-dir")
    progress.step("reading the candidate's quantized weights and the reference's (--quantized-reference)")
    first = tokens[:1]
    only = dataclasses.replace(options, checkpoints=None, weights=True, raw=False, start_position=0)
    traced = candidate.trace(first, only.request(reference_model))
    quantized = traced.metadata.get("quantized_weights") or {}
    owners = sorted({weight_of(name)[0] for name in quantized if weight_of(name)})   # their checkpoints alone
    reference = reference_model.capture(first, checkpoints=",".join(owners) if owners else None, weights=True,
                                        raw=False)
    reference_model.rest()
    if not quantized:   # a quantized file dequantized as it loaded: its float weights on a grid
        quantized = held_as_floats(reference, traced)
    shared = sorted(set(quantized) & set(traced.tensors) & set(reference.tensors))
    if not shared:
        raise OptionError(f"--quantized-reference: {candidate.description} holds no quantized weight parity can "
                          "read where the reference has one (torchao's, torch.ao's, bitsandbytes', optimum-quanto's "
                          "or HQQ's quantized weights, a tensor subclass with a dequantize() of its own, or float "
                          "weights on a quantization grid); leave the option out")
    taken, left = {}, []
    for name in shared:
        error, grid = grid_rounding(reference[name], traced[name], quantized[name]["rounding_l2"])
        if grid is not None and on_grid(error, grid):
            taken[name] = traced[name]
        else:
            left.append(name)
    if not taken and all(quantized[name]["rounding_l2"] is None for name in left):
        raise OptionError(f"--quantized-reference: none of the candidate's {len(left)} quantized weights is on a grid "
                          f"parity can read (first: {left[0]}, {quantized[left[0]]['format']}), so none can be told "
                          "from a conversion error; leave the option out")
    if taken:
        reference_model.take_weights(taken)
    note = (f"the reference computed with the candidate's {len(taken)} quantized weights (as the floats they stand "
            f"for, each the reference's own rounded to its grid) in place of its own (--quantized-reference): "
            "what is compared is what the candidate computes with them, not their quantization")
    if left:
        note += (f"; left as the reference's, {len(left)} that are not its rounded or whose grid cannot be read "
                 f"(first: {left[0]})")
    return note


def held_as_floats(reference, traced) -> dict[str, dict]:
    """{weight: {format, rounding_l2}} for each of the candidate's plain float weights that differs from the
    reference's and lies on a quantization grid (diagnose/weight_grid.py)."""
    from parity.core.metrics import rel_l2
    from parity.core.names import weight_of
    from parity.diagnose.context import widened
    from parity.diagnose.weight_grid import grid_of
    from parity.diagnose.weights import SAME

    found = {}
    for name in sorted(set(traced.tensors) & set(reference.tensors)):
        if weight_of(name) is None or traced.shape_of(name) != reference.shape_of(name):
            continue
        candidate = widened(traced[name])
        if rel_l2(widened(reference[name]), candidate) <= SAME:
            continue
        grid = grid_of(candidate)
        if grid is not None:
            found[name] = {"format": grid.describe(), "rounding_l2": grid.rounding_l2}
    return found
