"""Which KV head each query head reads, seen in attn_ctx alone (a fused kernel, or attention inline with its
probabilities unrecorded): the keys' or the values' heads expanded the other way (repeat where
repeat_interleave is meant), or reordered after the point where they are recorded.

Each query head's output over the first HEAD_TOKENS tokens is matched against the reference's query
attending to each KV head's keys, with the values of that same head or of the head the reference reads,
and against the reference's keys with each KV head's values. The assignment found, recomputed over every
token, must explain the candidate's attn_ctx. Named gqa_head_mapping (attention.py) where a side is
expanded the other way or heads are read no permutation explains, layout_permuted (values.py) where a
side's KV heads are reordered.
"""

from __future__ import annotations

import numpy as np

from parity.core.results import Diagnosis
from parity.diagnose.context import Context

HEAD_TOKENS = 64    # heads are matched on the attention of this many first queries
CLEARLY = 0.5       # a head's other KV head must leave at most half the error of the reference's


def expansions(heads: int, kv_heads: int) -> dict[str, list[int]]:
    """The two ways of giving each of `heads` query heads one of `kv_heads` KV heads: the KV head query
    head h reads. 'interleaved' is repeat_interleave's (transformers' repeat_kv), 'tiled' repeat's."""
    group = heads // kv_heads
    return {"interleaved": [h // group for h in range(heads)], "tiled": [h % kv_heads for h in range(heads)]}


def kv_heads_from_context(context: Context, cause: str):
    """The diagnosis of `cause` ('gqa_head_mapping' or 'layout_permuted') where query heads read other KV
    heads' keys or values than the reference's in attn_ctx, its probabilities unrecorded."""
    from parity.diagnose.attention_math import attention_focus, explains

    for name, kind, attention, reference, candidate in attention_focus(context):
        if (kind != "attn_ctx" or name.replace("attn_ctx", "attn_probs") in context.candidate or attention.heads < 2
                or candidate.shape != reference.shape or candidate.ndim != 2):
            continue
        reads = expansions(attention.heads, attention.kv_heads)["interleaved"]
        found = _assignment(attention, candidate, reads)
        if found is None:
            continue
        keys, values = found
        residual = explains(context, name, candidate, attention.output(kind, key_heads=keys, value_heads=values),
                            reference)
        if residual is None:
            continue
        found_cause, words, advice = _described(keys, values, reads, attention.kv_heads)
        if found_cause == cause:
            yield Diagnosis(cause, name, f"attention recomputed from the reference's q, k and v with {words} "
                                         f"reproduces the candidate's {name} (rel error {residual:.2g}; its "
                                         f"probabilities are not recorded): {advice}")
        return


def _assignment(attention, candidate: np.ndarray, reads: list[int]) -> tuple[list[int], list[int]] | None:
    """(keys, values): the KV head whose keys, and whose values, each query head reads in the candidate's
    first HEAD_TOKENS rows; None where every head reads the reference's."""
    heads, kv_heads, head_dim = attention.heads, attention.kv_heads, attention.head_dim
    count = min(HEAD_TOKENS, candidate.shape[0])
    target = candidate[:count].reshape(count, heads, head_dim).astype(np.float64)               # (t, H, hd)

    def errors(keys: list[int], values: list[int]) -> np.ndarray:                              # (H,)
        output = attention.output("attn_ctx", tokens=count, key_heads=keys, value_heads=values)
        return np.linalg.norm(output.reshape(count, heads, head_dim) - target, axis=(0, 2))

    options = [(errors(reads, reads), reads, reads)]
    for head in range(kv_heads):
        every = [head] * heads
        options += [(errors(every, reads), every, reads), (errors(every, every), every, every),
                    (errors(reads, every), reads, every)]
    table = np.stack([error for error, _, _ in options])                                      # (options, H)
    best = np.argmin(table, axis=0)
    keys, values = list(reads), list(reads)
    for h in range(heads):
        if table[best[h], h] <= CLEARLY * table[0, h]:
            keys[h], values[h] = options[best[h]][1][h], options[best[h]][2][h]
    return None if keys == reads and values == reads else (keys, values)


def _described(keys: list[int], values: list[int], reads: list[int], kv_heads: int) -> tuple[str, str, str]:
    """(cause, words, advice) for the KV heads the query heads read."""
    sides = [(side, found) for side, found in (("keys", keys), ("values", values)) if found != reads]
    tiled = expansions(len(reads), kv_heads)["tiled"]
    if len(reads) > kv_heads and all(found == tiled for _, found in sides):
        which = " and ".join(side for side, _ in sides)
        return "gqa_head_mapping", (f"the {which}' {kv_heads} heads expanded tiled (query head h reading KV head "
                                    f"h % {kv_heads}) where the reference's are interleaved (h // "
                                    f"{len(reads) // kv_heads})"), \
            "repeat where repeat_interleave is meant (transformers' repeat_kv interleaves)"
    orders = [_reordering(found, reads, kv_heads) for _, found in sides]
    if all(order is not None for order in orders):
        words = " and ".join(f"the {side}' {kv_heads} heads in the order {order}"
                             f"{' (reversed)' if order == list(range(kv_heads))[::-1] else ''}"
                             for (side, _), order in zip(sides, orders))
        return "layout_permuted", words, "heads reordered after they are recorded, when split or merged"
    words = " and ".join(f"query heads 0..{len(reads) - 1} reading the {side} of KV heads {found}" for side, found in sides)
    return "gqa_head_mapping", f"{words} where the reference's read {reads}", \
        "the query heads grouped over the KV heads another way"


def _reordering(found: list[int], reads: list[int], kv_heads: int) -> list[int] | None:
    """order with found[h] == order[reads[h]] for every query head, when it is a permutation of the KV heads."""
    order: dict[int, int] = {}
    for read, head in zip(reads, found):
        if order.setdefault(read, head) != head:
            return None
    permutation = [order.get(head) for head in range(kv_heads)]
    return permutation if sorted(p for p in permutation if p is not None) == list(range(kv_heads)) else None
