"""A candidate that keeps q and k in the interleaved RoPE layout: found, and read in the reference's.

A head's dimensions are laid out for the rotary embedding one of two ways. transformers (and the
checkpoints it reads) rotates dimension i with i + hd/2: "halves". Meta's original Llama code,
gpt-fast, llama2.c and GGUF files rotate 2i with 2i + 1: "pairs", their q and k projection rows permuted
at conversion to match. The attention is the same either way (q and k are permuted alike, and their dot
products do not change), so a candidate whose q and k are the reference's in pair order is not wrong
there: its per-head q and k tensors (q, k, q_norm, k_norm, q_rope, k_rope) are read back in halves order
for the comparison, and the comparison says so.

It is decided once for the whole trace, from the first layer holding both q and k (else both q_rope and
k_rope): both must be the reference's in pair order, far closer so than as stored. A port that permuted
only one of them (a bug: its attention changes) is compared as stored and fails there, where the
layout_permuted diagnosis names it. Layers with a partial rotary embedding are not read this way,
nor tensors measured on the device and not kept (--on-device), which are compared as stored.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping

import numpy as np

from parity.core.metrics import rel_l2
from parity.core.names import parse
from parity.core.trace import Trace, layer_count

PER_HEAD_QK_KINDS = frozenset({"q", "k", "q_norm", "k_norm", "q_rope", "k_rope"})
PAIRED_KINDS = (("q", "k"), ("q_rope", "k_rope"))
CLOSER = 0.01   # in pair order, rel_l2 at most this fraction of its value as stored ...
NEAR = 0.1      # ... and at most this: the same values, not a lesser mismatch


def unpermute_qk(array: np.ndarray, head_dim: int) -> np.ndarray:
    """(T, H*hd) in pair order -> (T, H*hd) in halves order: row `half*hd/2 + i` of each head comes from
    `2*i + half` (what GGUF conversion and Meta's checkpoints store)."""
    tokens = array.shape[0]
    per_head = array.reshape(tokens, -1, head_dim // 2, 2)   # (T, H, hd/2, 2): [.., i, half]
    return per_head.swapaxes(-1, -2).reshape(tokens, -1)      # (T, H, 2, hd/2) -> (T, H*hd)


def reference_head_dim(reference: Trace) -> int | None:
    """The head size the reference's config declares (head_dim, else hidden / heads); None if it does not,
    or when layer 0 rotates only part of each head."""
    config = reference.metadata.get("config") or {}
    heads = config.get("num_attention_heads") or config.get("n_head")
    width = config.get("hidden_size") or config.get("n_embd")
    head_dim = config.get("head_dim") or (width // heads if width and heads else None)
    layers = (reference.metadata.get("architecture") or {}).get("layers")
    facts = layers[0] if isinstance(layers, list) and layers and isinstance(layers[0], dict) else {}
    rotary = facts.get("rotary_dim")
    if not isinstance(head_dim, int) or head_dim < 2 or head_dim % 2 or (rotary and rotary != head_dim):
        return None
    return head_dim


def pair_layout(reference: Trace, candidate: Trace, head_dim: int | None) -> bool:
    """Does the candidate keep q and k in pair order (module docstring)?"""
    if head_dim is None:
        return False
    for layer in range(layer_count(reference)):
        for kinds in PAIRED_KINDS:
            names = [f"layers.{layer}.{kind}" for kind in kinds]
            if all(name in reference and name in candidate for name in names):
                try:
                    return all(_closer_in_pairs(reference[name], candidate[name], head_dim) for name in names)
                except KeyError:   # measured where the models ran and not kept (--on-device): compared as stored
                    return False
    return False


def _closer_in_pairs(reference: np.ndarray, candidate: np.ndarray, head_dim: int) -> bool:
    if reference.shape != candidate.shape or reference.ndim != 2 or reference.shape[-1] % head_dim:
        return False
    stored = rel_l2(reference, candidate)
    paired = rel_l2(reference, unpermute_qk(np.asarray(candidate), head_dim))
    return bool(np.isfinite(paired) and paired <= NEAR and paired <= CLOSER * stored)


def in_halves_order(candidate: Trace, head_dim: int) -> Trace:
    """The candidate with its per-head q and k tensors read in halves order."""
    import dataclasses

    return dataclasses.replace(candidate, tensors=_HalvesOrder(candidate.tensors, head_dim))


class _HalvesOrder(Mapping):
    """A trace's tensors, its (T, H*hd) per-head q and k ones put in halves order as they are read; the rest,
    and what the wrapped mapping offers beyond a mapping (shapes without reading, forget), as they are."""

    def __init__(self, tensors: Mapping[str, np.ndarray], head_dim: int) -> None:
        self._tensors, self._head_dim = tensors, head_dim

    def __getitem__(self, name: str) -> np.ndarray:
        return self._reordered(name, self._tensors[name])

    def __iter__(self) -> Iterator[str]:
        return iter(self._tensors)

    def __len__(self) -> int:
        return len(self._tensors)

    def __contains__(self, name: object) -> bool:
        return name in self._tensors

    def head(self, name: str, count: int) -> np.ndarray:
        head = getattr(self._tensors, "head", None)
        rows = head(name, count) if head is not None else self._tensors[name][:count]
        return self._reordered(name, rows)

    def __getattr__(self, attribute: str):
        return getattr(self._tensors, attribute)

    def _reordered(self, name: str, tensor: np.ndarray) -> np.ndarray:
        checkpoint = parse(name)
        if checkpoint is None or checkpoint.kind not in PER_HEAD_QK_KINDS or checkpoint.layer is None:
            return tensor
        if tensor.ndim != 2 or tensor.shape[-1] % self._head_dim:
            return tensor
        return unpermute_qk(np.asarray(tensor), self._head_dim)


def pair_layout_note(head_dim: int) -> str:
    return (f"the candidate keeps q and k in the interleaved RoPE layout (each head's dimensions rotated in pairs "
            f"(2i, 2i+1), as Meta's Llama code, gpt-fast and GGUF files do; the reference rotates i with "
            f"i+{head_dim // 2}): its q/k tensors were compared after putting each head's dimensions in the "
            f"reference's order; the attention is the same in either layout")
