"""Recorded tensors in the trace's layout: a batch axis of one dropped, heads flattened token-major.

    canonical_layout("layers.0.q", q, token_count=T, heads={H, Hkv})
        (1, T, H, hd), (1, H, T, hd), (T, H, hd), (H, T, hd), (T, H*hd)  ->  (T, H*hd)

Ports keep per-head tensors (q, k, v, after RoPE, the attention context) token-major
`[B, T, H, hd]` or head-major `[B, H, T, hd]`, with or without the batch axis. Which
axis holds the tokens is read off the sizes: the token count of the pass and the head
counts of the model's config. Where both readings fit (as many heads as tokens), the
layout must be declared (`Probe(layout="BHTD")`, or a module's `parity_layout`):
a tensor is never stored in a layout that was guessed.
"""

from __future__ import annotations

from collections.abc import Collection

from parity.core.config_shape import config_shape
from parity.core.errors import CaptureError
from parity.core.names import HEAD_KINDS, parse

# A declared layout names each axis: B batch, T tokens, H heads, D head dim (or the flat width).
LAYOUTS = {
    "BTHD": (1, 2),   # the (token axis, head axis) after the batch axis is dropped: token-major
    "BHTD": (2, 1),   # head-major
    "THD": (0, 1),
    "HTD": (1, 0),
    "BTD": None,      # already flat per token
    "TD": None,
}


def first_tensor(output):
    import torch

    if isinstance(output, torch.Tensor):
        return output
    if isinstance(output, (tuple, list)):
        return next((item for item in output if isinstance(item, torch.Tensor)), None)
    return getattr(output, "logits", None)


def config_heads(config) -> frozenset[int]:
    """The head counts a config declares (query heads, key/value heads), for reading per-head layouts
    (core/config_shape.py reads every naming)."""
    return config_shape(config).head_counts


def canonical_layout(name: str, tensor, *, token_count: int | None = None, heads: Collection[int] = (),
                     declared: str | None = None):
    """The tensor as the trace holds it: a batch axis of one dropped; a per-head checkpoint's heads flattened
    into (T, H*hd), the token axis found from `declared`, else from `token_count` and `heads`.

    Ports mix batched and unbatched tensors, so a leading axis of size 1 is taken for the batch wherever it
    appears; for one-token inputs, where that guess can be wrong, the comparison aligns tensors that differ
    only by axes of size 1."""
    checkpoint = parse(name)
    per_head = checkpoint is not None and checkpoint.kind in HEAD_KINDS
    if declared is not None and per_head:
        return _declared(name, tensor, declared)
    if tensor.ndim >= 2 and tensor.shape[0] == 1:
        tensor = tensor[0]
    if per_head and tensor.ndim == 3:
        if _head_major(name, tuple(tensor.shape), token_count, frozenset(heads)):
            tensor = tensor.transpose(0, 1)                                     # (H, T, hd) -> (T, H, hd)
        tensor = tensor.reshape(tensor.shape[0], -1)                            # (T, H, hd) -> (T, H*hd)
    return tensor


def _declared(name: str, tensor, layout: str):
    axes = LAYOUTS.get(layout.upper())
    if layout.upper() not in LAYOUTS:
        raise CaptureError(f"{name}: layout {layout!r} is not one of {', '.join(LAYOUTS)}; declare the axes in "
                           "order, e.g. Probe(layout='BHTD') for (batch, heads, tokens, head dim)")
    expected = len(layout)
    if tensor.ndim != expected or (layout.upper().startswith("B") and tensor.shape[0] != 1):
        raise CaptureError(f"{name}: declared layout {layout} but the tensor has shape {list(tensor.shape)}; "
                           "declare the layout it has (parity runs one sequence: a batch axis is 1)")
    if layout.upper().startswith("B"):
        tensor = tensor[0]
        axes = None if axes is None else (axes[0] - 1, axes[1] - 1)
    if axes is not None and axes[0] > axes[1]:
        tensor = tensor.transpose(0, 1)
    return tensor.reshape(tensor.shape[0], -1)


def _head_major(name: str, shape: tuple[int, int, int], token_count: int | None, heads: frozenset[int]) -> bool:
    """Whether a per-head (A, B, hd) tensor is (H, T, hd): the reading its sizes allow. Where neither reading
    fits the token count (keys read from a cache hold more positions than the step), the head counts decide."""
    first, second, _ = shape
    token_major = (token_count is None or first == token_count) and (not heads or second in heads)
    head_major = (token_count is None or second == token_count) and (not heads or first in heads)
    if token_major != head_major:
        return head_major
    if token_major and token_count is not None:   # both fit: as many heads as tokens
        raise CaptureError(
            f"{name}: a per-head tensor of shape {list(shape)} reads as [T, H, hd] and as [H, T, hd] alike "
            f"({first} tokens, {first} heads): declare its layout, e.g. Probe(layout='BHTD') or a "
            "`parity_layout = 'BHTD'` attribute on the module (or on a function that returns it), or trace a "
            "prompt of another length")
    return bool(heads) and first in heads and second not in heads
