"""Causes of a decode path that parts from the full pass, from the step's own tensors.

  kv_cache_offset  at position p the step attends over a number of keys other than p + 1:
                   the cache was written at the wrong slot (or a slot left empty)
  decode_rope      the step's attention probabilities are reproduced when the cached keys are
                   taken before RoPE: the decode path uses cached keys without rotating them
"""

from __future__ import annotations

import numpy as np

from parity.core.names import parse
from parity.core.results import Diagnosis
from parity.core.trace import Trace
from parity.diagnose.attention import apply_rope, attention_probabilities
from parity.diagnose.context import ModelConfig, reproduces

CAUSES = frozenset({"kv_cache_offset", "decode_rope"})


def diagnose_decode(full: Trace, step: dict, position: int, name: str | None, config: ModelConfig) -> list[Diagnosis]:
    checkpoint = parse(name) if name else None
    if checkpoint is None or checkpoint.kind != "attn_probs" or name not in step:
        return []
    probabilities = step[name].reshape(step[name].shape[0], -1)                       # (H, S) of this query
    keys = probabilities.shape[-1]
    if keys != position + 1:
        return [Diagnosis("kv_cache_offset", name,
                          f"decoding position {position} attends over {keys} keys where {position + 1} tokens have "
                          f"been seen: the cache is written {'past' if keys > position + 1 else 'short of'} "
                          "where it should be")]
    if _unrotated_cache_reproduces(full, step, checkpoint.layer, position, probabilities, config):
        return [Diagnosis("decode_rope", name,
                          f"decoding position {position}, the attention matches keys taken before RoPE for the "
                          "cached positions: the decode path uses cached keys without rotating them")]
    return []


def _unrotated_cache_reproduces(full, step, layer, position, probabilities, config) -> bool:
    if not (config.heads and config.kv_heads and config.head_dim and config.rope_theta):
        return False
    q_rope = step.get(f"layers.{layer}.q_rope")
    k_source = full.tensors.get(f"layers.{layer}.k_norm", full.tensors.get(f"layers.{layer}.k"))
    if q_rope is None or k_source is None:
        return False
    keys = k_source[: position + 1].astype(np.float64)                                 # before RoPE
    rotated = apply_rope(keys, config.head_dim, config.rope_theta, np.arange(position + 1), "half")
    keys[position] = rotated[position]                                                 # only this step's key rotated
    group = config.heads // config.kv_heads
    query = np.zeros((position + 1, q_rope.size))
    query[position] = q_rope.reshape(-1)
    expected = attention_probabilities(query, keys, config.heads, config.kv_heads, config.head_dim,
                                       lambda h: h // group)[:, position, :]            # (H, S)
    return reproduces(probabilities.astype(np.float64), expected)
