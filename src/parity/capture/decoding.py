"""Incremental decoding of a PyTorch candidate through its KV cache, traced step by step.

A candidate decodes when its forward takes `past_key_values` and `use_cache`, as
transformers models do: called with use_cache=True it returns its logits and the
cache (a tuple, or an object with `.logits` and `.past_key_values`).
"""

from __future__ import annotations

import inspect

import numpy as np

from parity.capture.torch_module import ModuleTracer, TapsLike, _canonical_layout, _first_tensor
from parity.core.metrics import rel_l2
from parity.core.names import in_flow_order, parse


def can_decode(model) -> bool:
    parameters = inspect.signature(model.forward).parameters
    return "past_key_values" in parameters and "use_cache" in parameters


def _split(output):
    if isinstance(output, tuple):
        return output[0], output[1]
    return output.logits, output.past_key_values


def incremental(model, prompt: list[int], continuation: list[int], *, taps: TapsLike | None = None):
    """Logits rows (1 + N, V) and, with taps, each step's recorded checkpoints (step 0 is the prefill)."""
    import torch

    rows, steps, cache = [], [], None
    chunks = [prompt] + [[token] for token in continuation]
    with torch.no_grad():
        for chunk in chunks:
            if taps is not None:
                with ModuleTracer(model, taps) as tracer:
                    logits, cache = _split(model(torch.tensor([chunk]), past_key_values=cache, use_cache=True))
                steps.append({name: tensor.float().numpy() for name, tensor in tracer.tensors.items()})
            else:
                logits, cache = _split(model(torch.tensor([chunk]), past_key_values=cache, use_cache=True))
            rows.append(logits[0, -1].double().numpy())
    return np.stack(rows), steps


def full_logits(model, ids: list[int]) -> np.ndarray:
    import torch

    with torch.no_grad():
        output = _first_tensor(model(torch.tensor([ids])))
    return _canonical_layout("logits", output).double().numpy()


def first_checkpoint(full_trace, step: dict, position: int, bound: float) -> str | None:
    """The first checkpoint (in data-flow order) where a decode step's tensors part from the full
    pass's at the same position."""
    for name in in_flow_order(step):
        if name not in full_trace or name == "logits":
            continue
        checkpoint = parse(name)
        full = full_trace[name]
        if checkpoint is not None and checkpoint.kind == "attn_probs":   # (H, T, S): this query's row, its keys
            row = full[:, position, : position + 1]
        else:
            row = full[position]
        value = step[name]
        if value.size != row.size:
            return name  # a cache that grew by another number of positions
        if not rel_l2(row.reshape(-1), value.reshape(-1)) <= bound:
            return name
    return None
