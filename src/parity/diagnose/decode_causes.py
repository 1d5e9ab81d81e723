"""Causes of a decode path that parts from the full pass, from the step's own tensors.

  kv_cache_unread  at position p > 0 a layer attends over the keys of this step alone: it does not
                   read its cache (the layers before it do)
  kv_cache_offset  at position p the step attends over a number of keys other than p + 1, or the keys
                   it reads from the cache match the full pass's except where this step's key (or an
                   earlier one) should be, which holds zeros or the key of the position before: the
                   cache was written at the wrong slot. Where the step records neither its probabilities
                   nor the keys it read (a port whose cache lives inside its modules), its attention output
                   is recomputed from the full pass's keys and values with the slots moved one way or
                   another (slot_hypotheses below), once the same arithmetic reproduces the full pass's own
                   output at that position
  decode_rope      the step's attention (its probabilities, or its output where only that is recorded) is
                   reproduced when the cached keys are taken before RoPE: the decode path uses cached keys
                   without rotating them
  decode_quantization
                   the first checkpoint that parts is made by an op the candidate declares quantizes
                   its input as it runs (a quantized build's): everything before it agrees and its
                   weights are the same in both runs, but with a scale each call sets (a dynamic
                   quantization: onnxruntime's DynamicQuantizeLinear, torch.ao's) a step rounds its
                   input on the grid its own tokens set, and on a fixed grid an input within float
                   rounding of the full pass's (a step sums its attention in another order) is rounded
                   a whole step apart wherever the two sit either side of a boundary
"""

from __future__ import annotations

import numpy as np

from parity.core.metrics import rel_l2
from parity.core.names import KEY_KINDS, parse
from parity.core.results import Diagnosis
from parity.core.trace import Trace
from parity.diagnose.attention import apply_rope, attention_probabilities
from parity.diagnose.context import CLOSE, ModelConfig, reproduces

CAUSES = frozenset({"kv_cache_unread", "kv_cache_offset", "decode_rope", "decode_quantization"})


def diagnose_decode(full: Trace, step: dict, position: int, name: str | None, config: ModelConfig) -> list[Diagnosis]:
    checkpoint = parse(name) if name else None
    if checkpoint is None or name not in step:
        return []
    if checkpoint.kind == "attn_probs":
        return _from_probabilities(full, step, position, name, checkpoint.layer, config)
    if checkpoint.kind in KEY_KINDS and step[name].shape[0] == position + 1 and position > 0:
        return _from_cached_keys(full, step[name], position, name, checkpoint.layer)
    if checkpoint.kind == "attn_ctx" and step[name].shape[0] == 1 and position > 0:
        return _from_context(full, step, position, name, checkpoint.layer, config)
    return []


def rounded_input(name: str | None, position: int, how: str | None) -> list[Diagnosis]:
    """The first checkpoint that parts, made by an op that quantizes its input as it runs (`how`, as the candidate
    declares it; None where it does not)."""
    if name is None or not how:
        return []
    why = ("a step rounds its input on the grid its own tokens set, not the full pass's" if "per call" in how else
           "the step's input, within float rounding of the full pass's (its attention summed in another order), is "
           "rounded a whole step apart wherever the two sit either side of a rounding boundary")
    return [Diagnosis("decode_quantization", name,
                      f"decoding position {position}: {name} is the first checkpoint that parts from the full pass, "
                      f"and its op quantizes its input as it runs ({how}): {why}, so decoding cannot match the full "
                      "pass closer than that rounding")]


def _from_probabilities(full, step, position, name, layer, config) -> list[Diagnosis]:
    probabilities = step[name]                                                        # (H, T, S) of this step
    queries, keys = probabilities.shape[-2], probabilities.shape[-1]
    if queries == position + 1 and position > 0:
        return []         # the prefill's every query: it reads no cache, so no decode cause fits
    if keys == queries and position + 1 > keys:
        return [Diagnosis("kv_cache_unread", name,
                          f"decoding position {position}, layer {layer} attends over the {keys} key(s) of this step "
                          f"alone where {position + 1} tokens have been seen: this layer does not read its cache")]
    if keys != position + 1:
        return [Diagnosis("kv_cache_offset", name,
                          f"decoding position {position} attends over {keys} keys where {position + 1} tokens have "
                          f"been seen: the cache is written {'past' if keys > position + 1 else 'short of'} "
                          "where it should be")]
    rows = probabilities.reshape(probabilities.shape[0], -1)                          # (H, S) of this query
    if _unrotated_cache_reproduces(full, step, layer, position, rows, config):
        return [Diagnosis("decode_rope", name,
                          f"decoding position {position}, the attention matches keys taken before RoPE for the "
                          "cached positions: the decode path uses cached keys without rotating them")]
    return []


def _from_cached_keys(full: Trace, read: np.ndarray, position: int, name: str, layer: int) -> list[Diagnosis]:
    """The keys a step read from its cache, (position + 1, width), against the full pass's at 0..position."""
    expected = full[name][: position + 1].astype(np.float64)
    read = read.reshape(position + 1, -1).astype(np.float64)
    wrong = [j for j in range(position + 1) if not rel_l2(expected[j], read[j]) <= CLOSE]
    if not wrong:
        return []
    zeros = [j for j in wrong if np.linalg.norm(read[j]) <= CLOSE * np.linalg.norm(expected[j])]
    late = [j for j in wrong if j > 0 and rel_l2(expected[j - 1], read[j]) <= CLOSE]
    if set(wrong) <= set(zeros) | set(late):
        what = "; ".join(part for part in (
            f"zeros at position{'s' if len(zeros) > 1 else ''} {_positions(zeros)}" if zeros else "",
            f"the key of the position before at {_positions(late)}" if late else "") if part)
        return [Diagnosis("kv_cache_offset", name,
                          f"decoding position {position}, the keys layer {layer} reads from its cache match the full "
                          f"pass's at the other positions but hold {what}: the cache is written one slot off "
                          "where it is read")]
    unrotated = full.tensors.get(f"layers.{layer}.k_norm", full.tensors.get(f"layers.{layer}.k"))
    if name.endswith("k_rope") and unrotated is not None and max(wrong) < position \
            and reproduces(read[:position], unrotated[:position].reshape(position, -1).astype(np.float64)):
        return [Diagnosis("decode_rope", name,
                          f"decoding position {position}, the keys layer {layer} reads from its cache for positions "
                          f"0..{position - 1} are the full pass's keys before RoPE: cached keys are not rotated")]
    return []


def _positions(positions: list[int]) -> str:
    return ", ".join(map(str, positions[:6])) + (f" ... ({len(positions)} in all)" if len(positions) > 6 else "")


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
    group, width = config.heads // config.kv_heads, config.heads * config.head_dim
    if q_rope.size % width or keys.shape[-1] != config.kv_heads * config.head_dim:
        return False
    query = np.zeros((position + 1, width))
    query[position] = q_rope.reshape(-1, width)[-1]                                    # this step's query
    expected = attention_probabilities(query, keys, config.heads, config.kv_heads, config.head_dim,
                                       lambda h: h // group)[:, position, :]            # (H, S)
    return reproduces(probabilities.astype(np.float64), expected)


def _decode_scale(attention, observed: np.ndarray, position: int, layer: int, name: str) -> Diagnosis | None:
    """attention_scale: the step's output is the full pass's attention at `position` with its scores scaled
    otherwise (a decode path of its own that scales differently)."""
    from parity.diagnose.attention_math import SCALE_SAME, fit_scale, scale_label

    standard = attention.head_dim ** -0.5
    scale, _ = fit_scale(lambda s: attention.output(attention.keys, attention.values, s), observed,
                          attention.head_dim)
    if abs(scale / standard - 1) <= SCALE_SAME or not reproduces(observed, attention.output(
            attention.keys, attention.values, scale)):
        return None
    return Diagnosis("attention_scale", name,
                     f"decoding position {position}, layer {layer}'s attention output is the full pass's attention "
                     f"with the scores scaled by {scale:.4g}{scale_label(scale, attention.head_dim)} where the model "
                     f"scales by {standard:.4g}{scale_label(standard, attention.head_dim)}: the decode path scales "
                     f"its scores otherwise than the full pass")


def _from_context(full, step: dict, position: int, name: str, layer: int, config: ModelConfig) -> list[Diagnosis]:
    """The step's attention output, (1, H*hd), against the full pass's attention at `position` over cache slots
    moved as a one-slot-off write moves them."""
    from parity.diagnose.decode_attention import SlotAttention, slot_hypotheses

    attention = SlotAttention.of(full, step, layer, position, config)
    if attention is None:
        return []
    observed = np.asarray(step[name], dtype=np.float64).reshape(-1)
    found = [(rel_l2(observed, output), what) for what, keys, values in
             slot_hypotheses(attention.keys, attention.values, position)
             for output in [attention.output(keys, values)] if reproduces(observed, output)]
    if found:
        _, what = min(found)   # the closest: a value written off and a key and value written off can both be close
        return [Diagnosis("kv_cache_offset", name,
                          f"decoding position {position}, layer {layer}'s attention output is the full pass's "
                          f"attention over a cache holding {what}")]
    scaled = _decode_scale(attention, observed, position, layer, name)
    if scaled is not None:
        return [scaled]
    if attention.unrotated is not None and attention.unrotated.shape == attention.keys.shape:
        keys = attention.unrotated.copy()
        keys[position] = attention.keys[position]                         # this step's own key, rotated
        if reproduces(observed, attention.output(keys, attention.values)):
            return [Diagnosis("decode_rope", name,
                              f"decoding position {position}, layer {layer}'s attention output is the full pass's "
                              f"attention over cached keys taken before RoPE for positions 0..{position - 1}: the "
                              "decode path caches keys before rotating them, or reads them back unrotated")]
    return []
