"""gqa_head_mapping, and the RoPE and attention helpers other detectors share (RoPE's causes are in
rope.py, the mask's in masks.py).

The GQA detector recomputes the step from the reference's own q and k after RoPE under
the alternative hypothesis, and reports only when that reproduces the candidate.
"""

from __future__ import annotations

import numpy as np

from parity.core.results import Diagnosis
from parity.diagnose import register
from parity.diagnose.context import Context, attended_values, reproduces


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


MAPPINGS = {"interleaved": "head h reads KV head h // group", "tiled": "head h reads KV head h % kv_heads"}


@register("gqa_head_mapping")
def gqa_head_mapping(context: Context):
    """Query heads read the wrong KV heads: h % Hkv (tiled) instead of h // group (interleaved), for
    the keys (seen in attn_probs) or the values alone (seen in attn_ctx, from the candidate's own
    probabilities and values); with the probabilities unrecorded, either side (kv_heads.py)."""
    from parity.diagnose.attention_math import _Attention
    from parity.diagnose.identities import attention_product, slot_tensor
    from parity.diagnose.kv_heads import expansions, kv_heads_from_context

    config = context.config
    if not config.heads or not config.kv_heads or config.kv_heads == config.heads or not config.head_dim:
        return
    orders = expansions(config.heads, config.kv_heads)
    for name, checkpoint, reference, candidate in context.focused("attn_probs", "attn_ctx"):
        at = f"layers.{checkpoint.layer}."
        if checkpoint.kind == "attn_probs":
            attention = _Attention(context, checkpoint.layer)
            if not attention.scores_usable:
                continue
            found = {label: attention.output("attn_probs", key_heads=order) for label, order in orders.items()}
            what = "keys"
        else:
            value = attended_values(at, context.reference)
            probs, values = slot_tensor(context, at + "attn_probs", at + "attn_probs"), slot_tensor(context, value, value)
            if probs is None or values is None or at + "attn_probs" not in context.candidate:  # else kv_heads.py
                continue
            found = {label: attention_product(config.heads, config.kv_heads, config.head_dim,
                                              lambda h, order=order: order[h])([probs, values])
                     for label, order in orders.items()}
            what = "values (the keys' are right: the probabilities agree)"
        used = next((label for label, p in found.items() if p.shape == reference.shape and reproduces(reference, p)), None)
        for label, hypothesis in found.items():
            if used is None or label == used or hypothesis.shape != candidate.shape:
                continue
            if context.consider(name, f"KV heads expanded {label}", candidate, hypothesis, reference) is not None:
                yield Diagnosis("gqa_head_mapping", name,
                                f"the candidate expands its {config.kv_heads} KV heads' {what} to {config.heads} query "
                                f"heads {label} where the reference is {used}: {MAPPINGS[label]} "
                                f"(repeat where repeat_interleave is meant, or the reverse)")
                return
    yield from kv_heads_from_context(context, "gqa_head_mapping")  # only attn_ctx visible
