"""One decoding step's attention rebuilt from the full pass's keys and values, for causes read from its output.

A port whose KV cache lives inside its modules records neither the keys a step read nor its
probabilities; what it records is the step's query and its attention output. `SlotAttention`
rebuilds that output from the full pass's keys and values at positions 0..p, taking whatever
the trace holds (keys after RoPE, or before it, rotated here in the layout whose result
reproduces the full pass's own output at p: the port's layout, found rather than assumed), and
`slot_hypotheses` names the caches a write one slot off leaves behind.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from parity.core.metrics import rel_l2
from parity.diagnose.attention import apply_rope
from parity.diagnose.context import ModelConfig, reproduces


@dataclass(frozen=True)
class SlotAttention:
    query: np.ndarray       # (H*hd,) this step's, after RoPE
    keys: np.ndarray        # (p + 1, Hkv*hd) the full pass's, after RoPE
    values: np.ndarray      # (p + 1, Hkv*hd)
    heads: int
    kv_heads: int
    head_dim: int
    unrotated: np.ndarray | None = None     # (p + 1, Hkv*hd) the full pass's keys before RoPE, where recorded

    def __repr__(self) -> str:
        return f"<SlotAttention {self.keys.shape[0]} slots heads={self.heads}/{self.kv_heads} hd={self.head_dim}>"

    @classmethod
    def of(cls, full, step: dict, layer: int, position: int, config: ModelConfig) -> SlotAttention | None:
        """The step's attention at layer `layer`, or None where the trace lacks a piece or the rebuilt attention
        does not reproduce the full pass's own output at `position` (another scale, a window, a soft cap)."""
        if not (config.heads and config.kv_heads and config.head_dim) or config.heads % config.kv_heads:
            return None
        at = f"layers.{layer}."
        values, output = _rows(full, at + "v", position), _row_at(full, at + "attn_ctx", position)
        if values is None or output is None:
            return None
        rebuilt = []   # each layout that reproduces the full pass's output, with what it leaves: the closest is the port's
        for query, keys, unrotated in _rotations(full, step, at, position, config):
            attention = cls(query, keys, values, config.heads, config.kv_heads, config.head_dim, unrotated)
            if attention.query.size == config.heads * config.head_dim \
                    and keys.shape[-1] == values.shape[-1] == config.kv_heads * config.head_dim \
                    and reproduces(output, attention.output(keys, values)):
                rebuilt.append((rel_l2(output, attention.output(keys, values)), len(rebuilt), attention))
        return min(rebuilt)[2] if rebuilt else None

    def output(self, keys: np.ndarray, values: np.ndarray, scale: float | None = None) -> np.ndarray:
        """softmax(scale q k^T) v over every slot (scale 1/sqrt(hd) where None), query head h reading KV head
        h // group: (H*hd,)."""
        from parity.diagnose.attention_math import attend

        scale = self.head_dim ** -0.5 if scale is None else scale
        return attend(self.query[None], keys, values, heads=self.heads, kv_heads=self.kv_heads,
                      head_dim=self.head_dim, scale=scale, causal=False)[1][0]


def slot_hypotheses(keys: np.ndarray, values: np.ndarray, position: int):
    """(what the cache holds, keys, values) for each way a write one slot off, of both or of one of them, leaves
    the slots read, and for a read one slot short. The attention of one query does not see the order of its slots,
    only the keys and values in them, so each way is named by what is there: two writes that leave the same set
    are one hypothesis."""
    sides = (("key and value", True, True, ""), ("value", False, True, " (its keys right)"),
             ("key", True, False, " (its values right)"))
    for what, moves_keys, moves_values, right in sides:
        for words, taken, zeroed in _one_slot_off(position, what):
            moved_keys, moved_values = keys.copy(), values.copy()
            for slot, source in taken.items():
                moved_keys[slot] = keys[source] if moves_keys else moved_keys[slot]
                moved_values[slot] = values[source] if moves_values else moved_values[slot]
            for slot in zeroed:
                moved_keys[slot] = 0.0 if moves_keys else moved_keys[slot]
                moved_values[slot] = 0.0 if moves_values else moved_values[slot]
            yield words + right, moved_keys, moved_values
    yield (f"only positions 0..{position - 1}: this step's own key and value are left out of its attention (the "
           "cache read one slot short)", keys[:position], values[:position])


def _one_slot_off(p: int, what: str):
    """(words, slot -> the position whose entry it holds, slots left at zero) of each one-slot-off write of `what`."""
    them, they_are = ("them", "they are") if what == "key and value" else ("it", "it is")
    return ((f"the {what} of position {p - 1} twice and this step's not at all: each step writes {them} one slot "
             f"past where it reads {them}", {p: p - 1}, ()),
            (f"zeros where this step's {what} should be: {they_are} not written where {they_are} read (one slot "
             "past, into an empty cache, or not at all)", {}, (p,)),
            (f"this step's {what} where position {p - 1}'s should be and zeros at its own: each step writes {them} "
             f"one slot short of where it reads {them}", {p - 1: p}, (p,)),
            (f"this step's {what} twice and position {p - 1}'s not at all: each step writes {them} one slot short "
             f"of where it reads {them}", {p - 1: p}, ()))


def _rotations(full, step: dict, at: str, position: int, config: ModelConfig):
    """(this step's query, the full pass's keys 0..p), both after RoPE, and those keys before it (or None): as
    recorded, else rotated here in each layout RoPE is laid out in."""
    unrotated = _rows(full, at + "k_norm", position)
    unrotated = unrotated if unrotated is not None else _rows(full, at + "k", position)
    query, keys = _last_row(step, at + "q_rope"), _rows(full, at + "k_rope", position)
    if query is not None and keys is not None:
        yield query, keys, unrotated
        return
    query = _last_row(step, at + "q_norm") if at + "q_norm" in step else _last_row(step, at + "q")
    if query is None or unrotated is None or not config.rope_theta or query.size % config.head_dim:
        return
    for layout in ("half", "adjacent"):
        rotated = apply_rope(query[None], config.head_dim, config.rope_theta, np.array([position]), layout)[0]
        yield rotated, apply_rope(unrotated, config.head_dim, config.rope_theta, np.arange(position + 1), layout), \
            unrotated


def _rows(full, name: str, position: int) -> np.ndarray | None:
    """Rows 0..position of the full pass's `name`, (position + 1, width) in float64, or None."""
    if name not in full:
        return None
    rows = np.asarray(full[name])
    if rows.ndim < 2 or rows.shape[0] < position + 1:
        return None
    return rows[: position + 1].reshape(position + 1, -1).astype(np.float64)


def _row_at(full, name: str, position: int) -> np.ndarray | None:
    """The full pass's row of `name` at `position`, flat in float64: from its rows, or the one row a pass judged
    as it was made keeps (core/decode_location.PositionRows.rows)."""
    kept = getattr(full, "rows", {})
    if name in kept:
        return np.asarray(kept[name], dtype=np.float64).reshape(-1)
    rows = _rows(full, name, position)
    return None if rows is None else rows[position]


def _last_row(step: dict, name: str) -> np.ndarray | None:
    if name not in step:
        return None
    rows = np.asarray(step[name])
    return rows.reshape(rows.shape[0], -1)[-1].astype(np.float64) if rows.ndim >= 1 and rows.size else None
