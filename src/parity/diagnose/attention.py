"""gqa_head_mapping, and the RoPE and attention helpers other detectors share (RoPE's causes are in
rope.py, the mask's in masks.py).

The GQA detector recomputes the step from the reference's own q and k after RoPE under
the alternative hypothesis, and reports only when that reproduces the candidate.
"""

from __future__ import annotations

import numpy as np

from parity.core.names import parse
from parity.core.results import Diagnosis
from parity.diagnose import register
from parity.diagnose.context import Context, matches, reproduces


def apply_rope(x: np.ndarray, head_dim: int, theta: float, positions: np.ndarray, layout: str) -> np.ndarray:
    """RoPE on (T, heads*head_dim): 'half' rotates dimension i with i + hd/2 (transformers), 'adjacent' (2i, 2i+1)."""
    count = x.shape[0]
    heads = x.reshape(count, -1, head_dim)                                              # (T, H, hd)
    inv_freq = 1.0 / theta ** (np.arange(0, head_dim, 2, dtype=np.float64) / head_dim)  # (hd/2,)
    angles = positions[:, None].astype(np.float64) * inv_freq[None, :]                  # (T, hd/2)
    cos, sin = np.cos(angles)[:, None, :], np.sin(angles)[:, None, :]
    if layout == "adjacent":
        even, odd = heads[..., 0::2], heads[..., 1::2]
        rotated = np.stack((even * cos - odd * sin, even * sin + odd * cos), axis=-1).reshape(heads.shape)
    else:
        first, second = heads[..., : head_dim // 2], heads[..., head_dim // 2:]
        rotated = np.concatenate((first * cos - second * sin, first * sin + second * cos), axis=-1)
    return rotated.reshape(count, -1)


def attention_probabilities(q: np.ndarray, k: np.ndarray, heads: int, kv_heads: int, head_dim: int,
                            kv_of_head) -> np.ndarray:
    """Causal softmax(q k^T / sqrt(hd)) from (T, H*hd) and (S, Hkv*hd), query head h reading KV head kv_of_head(h)."""
    count = q.shape[0]
    q = q.reshape(count, heads, head_dim)
    k = k.reshape(k.shape[0], kv_heads, head_dim)
    scores = np.stack([q[:, h] @ k[:, kv_of_head(h)].T for h in range(heads)]) / np.sqrt(head_dim)  # (H, T, S)
    scores = np.where(np.triu(np.ones(scores.shape[-2:], dtype=bool), k=1), -np.inf, scores)
    scores -= scores.max(-1, keepdims=True)
    weights = np.exp(scores)
    return weights / weights.sum(-1, keepdims=True)


@register("gqa_head_mapping")
def gqa_head_mapping(context: Context):
    """Query heads read the wrong KV heads: h % Hkv (tiled) instead of h // group (interleaved)."""
    config = context.config
    if not config.heads or not config.kv_heads or config.kv_heads == config.heads or not config.head_dim:
        return
    group = config.heads // config.kv_heads
    mappings = {"interleaved (head h reads KV head h // group)": lambda h: h // group,
                "tiled (head h reads KV head h % kv_heads)": lambda h: h % config.kv_heads}
    for name, checkpoint, reference, candidate in context.focused("attn_probs"):
        q, k = (context.reference.tensors.get(f"layers.{checkpoint.layer}.{kind}_rope") for kind in "qk")
        if q is None or k is None:
            continue
        found = {label: attention_probabilities(q.astype(np.float64), k.astype(np.float64), config.heads,
                                                config.kv_heads, config.head_dim, mapping)
                 for label, mapping in mappings.items()}
        reference_mapping = next((label for label, p in found.items() if reproduces(reference, p)), None)
        for label, probabilities in found.items():
            if label != reference_mapping and reference_mapping and matches(candidate, probabilities, reference) is not None:
                yield Diagnosis("gqa_head_mapping", name,
                                f"the candidate expands its {config.kv_heads} KV heads to {config.heads} query heads "
                                f"{label.split(' (')[0]} where the reference is {reference_mapping.split(' (')[0]}: "
                                f"{label.split('(')[1].rstrip(')')}")
                return
