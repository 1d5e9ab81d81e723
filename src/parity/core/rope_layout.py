"""q and k kept in the interleaved RoPE layout: found, and how to read them in the reference's.

A head's dimensions are laid out for the rotary embedding one of two ways. transformers (and the
checkpoints it reads) rotates dimension i with i + hd/2: "halves". Meta's original Llama code,
gpt-fast, llama2.c and GGUF files rotate 2i with 2i + 1: "pairs", their q and k projection rows permuted
at conversion to match. The attention is the same either way (q and k are permuted alike, and their dot
products do not change), so a candidate whose q and k are the reference's in pair order is not wrong
there: core/conventions.py reads its per-head q and k tensors (q, k, q_norm, k_norm, q_rope, k_rope) in
halves order (the convention rope_pairs), and says so.

It is decided once for the whole trace, from the first layer holding both q and k (else both q_rope and
k_rope): both must be the reference's in pair order, far closer so than as stored. A port that permuted
only one of them (a bug: its attention changes) is compared as stored and fails there, where the
layout_permuted diagnosis names it. Layers with a partial rotary embedding are not read this way,
nor tensors measured on the device and not kept (--on-device), which are compared as stored.
"""

from __future__ import annotations

from collections.abc import Callable, Collection

import numpy as np

from parity.core.config_shape import config_shape
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


def unpermute_rows(array: np.ndarray, head_dim: int) -> np.ndarray:
    """A parameter's rows (its first axis: q's or k's output channels, a weight [H*hd, D], a bias or a per-head
    norm's weight) from pair order to halves order, as unpermute_qk reads q and k."""
    array = np.asarray(array)
    columns = array.reshape(array.shape[0], -1).T                    # (rest, H*hd): the channels as columns
    return unpermute_qk(columns, head_dim).T.reshape(array.shape)


def rotated_head_dim(reference: Trace) -> int | None:
    """The head size the reference's config declares, when the rotary embedding turns all of it (layer 0's
    rotary_dim, where recorded); None otherwise."""
    head_dim = config_shape(reference.metadata.get("config")).head_dim
    layers = (reference.metadata.get("architecture") or {}).get("layers")
    facts = layers[0] if isinstance(layers, list) and layers and isinstance(layers[0], dict) else {}
    rotary = facts.get("rotary_dim")
    if head_dim is None or head_dim < 2 or head_dim % 2 or (rotary and rotary != head_dim):
        return None
    return head_dim


def kept_in_pairs(reference: Trace, candidate: Callable[[str], np.ndarray], names: Collection[str],
                  head_dim: int | None) -> bool:
    """Does the candidate keep q and k in pair order (module docstring)? `candidate` reads one of its
    tensors, `names` are those it holds."""
    if head_dim is None:
        return False
    for layer in range(layer_count(reference)):
        for kinds in PAIRED_KINDS:
            pair = [f"layers.{layer}.{kind}" for kind in kinds]
            if all(name in reference and name in names for name in pair):
                try:
                    return all(_closer_in_pairs(reference[name], candidate(name), head_dim) for name in pair)
                except KeyError:   # measured where the models ran and not kept (--on-device): compared as stored
                    return False
    return False


def is_per_head_qk(name: str) -> bool:
    checkpoint = parse(name)
    return checkpoint is not None and checkpoint.kind in PER_HEAD_QK_KINDS and checkpoint.layer is not None


def _closer_in_pairs(reference: np.ndarray, candidate: np.ndarray, head_dim: int) -> bool:
    if reference.shape != candidate.shape or reference.ndim != 2 or reference.shape[-1] % head_dim:
        return False
    stored = rel_l2(reference, candidate)
    paired = rel_l2(reference, unpermute_qk(np.asarray(candidate), head_dim))
    return bool(np.isfinite(paired) and paired <= NEAR and paired <= CLOSER * stored)


def pairs_detail(head_dim: int) -> str:
    """What the adaptation note says of it."""
    return (f"kept in the interleaved RoPE layout (each head's dimensions rotated in pairs (2i, 2i+1), as Meta's "
            f"Llama code, gpt-fast and GGUF files do, where the reference rotates i with i+{head_dim // 2}): read "
            f"in the reference's order, the attention being the same in either layout")
