"""RoPE causes seen in the attention, for a candidate that records no q_rope or k_rope (its RoPE inline, as
in Meta's code, gpt-fast and torchtune): rope_layout and rope_direction, rope_theta and rope_scaling at
attn_probs or attn_ctx.

The reference's rotation is fitted from its own q (or q_norm) and q_rope, as rope.py does. Each variant
of it (the other layout of a head's pairs, the angles turned backward) is applied to the reference's
q and k before RoPE, and attention is recomputed with the reference's v: a variant that reproduces the
candidate's tensor names its cause. The commonest: a port that rotates pairs (2i, 2i+1), Meta-style,
on q and k projected by weights still in transformers' order (halves), because the conversion that
permutes their rows was left out.

Then each table of frequencies a port gets instead (another theta, another scaling: rope_fit.Tables)
is scored by the attention it makes over the first SEARCH_TOKENS tokens (the causal attention of
those depends on them alone), the best refined (theta by golden-section search on its logarithm),
and the whole attention recomputed with it must explain the candidate's. The commonest: a builder's
default base (torchtune's Llama 3, 500000) left where the checkpoint's is another.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np

from parity.core.metrics import rel_l2
from parity.core.results import Diagnosis
from parity.diagnose import register
from parity.diagnose.attention_math import attention_focus, explains
from parity.diagnose.context import Context, widened
from parity.diagnose.rope import rotated_source, start_position
from parity.diagnose.rope_fit import (LAYOUTS, RECIPROCAL, Rotation, Tables, describe_parameters, fit,
                                      noise_floor, reciprocal_table, rope_parameters, rotary_dim)

FITTED = 1e-3   # the reference's rotation must reproduce its own q_rope this closely (or to 10x its rounding)
SEARCH_TOKENS = 64   # the tables are scored on the attention of this many first tokens


def _variants(rotation: Rotation) -> list[tuple[str, Rotation | None, Rotation | None, str, str]]:
    """(cause, the rotation of q, of k (None: left as it is), what it is, advice) of each variant."""
    other = "adjacent" if rotation.layout == "half" else "half"
    paired = dataclasses.replace(rotation, layout=other)
    backward = dataclasses.replace(rotation, direction=-rotation.direction)
    reversed_half = ": rotate_half returning cat(x2, -x1) instead of cat(-x2, x1), or sin with the wrong sign"
    return [("rope_layout", paired, paired,
             f"RoPE rotating {LAYOUTS[other]} where the reference rotates {LAYOUTS[rotation.layout]}",
             ": a checkpoint read for Meta-style RoPE needs each head's q and k projection rows permuted into pair "
             "order (Meta's checkpoints are; gpt-fast's and llama.cpp's converters do it), else rotate halves"),
            ("rope_direction", backward, backward, "RoPE turning the other way (its angles negated)", reversed_half),
            ("rope_direction", rotation, backward, "the keys' RoPE turning the other way (q's as the reference's)",
             reversed_half + ", in the keys' rotation alone"),
            ("op_skipped", rotation, None, "RoPE applied to q alone (the keys left unrotated)",
             ": the keys' rotation is skipped, or its result dropped (k = rotate(k) missing)"),
            ("op_skipped", None, None, "no RoPE (q and k left unrotated)",
             ": the rotation is skipped: its call left out, or a fused attention told not to rotate (an ONNX "
             "GroupQueryAttention with do_rotary=0)")]


def _reference_rotation(context: Context, layer: int):
    """(rotation, rotary dim, q before RoPE, k before RoPE) of the reference's layer, or None."""
    config, reference = context.config, context.reference
    parameters = rope_parameters(config, layer)
    sources = [rotated_source(reference, f"layers.{layer}.{kind}") for kind in ("q_rope", "k_rope")]
    if parameters is None or None in sources or f"layers.{layer}.q_rope" not in reference or not config.head_dim:
        return None
    x_q, x_k = (widened(reference[source]) for source in sources)
    y_q = widened(reference[f"layers.{layer}.q_rope"])
    if x_q.shape != y_q.shape or x_q.ndim != 2 or x_q.shape[-1] % config.head_dim or x_q.shape[0] < 3:
        return None
    dim, start = rotary_dim(config, layer, parameters), start_position(context)
    tables = Tables(parameters, config.head_dim, dim, config.raw.get("max_position_embeddings"), start + x_q.shape[0])
    floor = noise_floor(reference.dtypes.get(f"layers.{layer}.q_rope"))
    found = fit(x_q, y_q, config.head_dim, dim, tables.all()[:1], floor, start=start)
    if found is None or found[1] > max(10 * floor, FITTED) or found[0].changes:
        return None
    return found[0], dim, x_q, x_k, tables


@register("rope_in_attention")
def rope_in_attention(context: Context):
    """The attention is what a RoPE variant of the reference's makes, when the candidate's q_rope is unseen."""
    for name, kind, attention, reference, candidate in attention_focus(context):
        layer = int(name.split(".")[1])
        if f"layers.{layer}.q_rope" in context.candidate or f"layers.{layer}.k_rope" in context.candidate:
            continue   # the rotation itself is compared, and its causes read there (rope.py)
        found = _reference_rotation(context, layer)
        if found is None:
            continue
        rotation, dim, x_q, x_k, tables = found
        for cause, of_q, of_k, what, advice in _variants(rotation):
            q = x_q if of_q is None else of_q.apply(x_q, context.config.head_dim, dim)
            k = x_k if of_k is None else of_k.apply(x_k, context.config.head_dim, dim)
            residual = explains(context, name, candidate, attention.output(kind, q=q, k=k), reference)
            if residual is None or not np.isfinite(residual):
                continue
            yield Diagnosis(cause, name, f"attention recomputed from the reference's q, k and v with {what} "
                                         f"reproduces the candidate's {name} (rel error {residual:.2g}; its q_rope "
                                         f"and k_rope are not recorded){advice}")
            return
        found = _other_table(context, name, kind, attention, candidate, reference, rotation, tables, dim, x_q, x_k)
        if found is not None:
            yield found
            return


def _other_table(context, name, kind, attention, candidate, reference, rotation, tables, dim, x_q, x_k):
    """rope_theta or rope_scaling: the table of frequencies whose attention explains the candidate's, or None."""
    head_dim, count = context.config.head_dim, min(SEARCH_TOKENS, x_q.shape[0])

    def made(table, tokens):     # the attention under `table`, over the first `tokens` tokens
        # the table's attention factor in place of the config's (YaRN's and LongRoPE's scale cos and sin)
        variant = dataclasses.replace(rotation, table=table, gain=rotation.gain * table.gain / rotation.table.gain)
        q, k = variant.apply(x_q[:tokens], head_dim, dim), variant.apply(x_k[:tokens], head_dim, dim)
        return attention.output(kind, q=q, k=k, tokens=tokens)

    def error(table) -> float:
        return rel_l2(_prefix(candidate, kind, count), made(table, count)) if table is not None else math.inf

    others = [table for table in tables.all()[1:] + [reciprocal_table(rotation.table)] if table and table.changes]
    if not others:
        return None
    best = _refined(min(others, key=error), tables, error)
    residual = explains(context, name, candidate, made(best, x_q.shape[0]), reference)
    if residual is None or not np.isfinite(residual) or error(best) >= error(rotation.table):
        return None
    if best.changes == {"reciprocal"}:
        return Diagnosis("rope_angles", name, f"attention recomputed from the reference's q, k and v with RoPE turning "
                                              f"at the reciprocals of the reference's rates reproduces the candidate's "
                                              f"{name} (rel error {residual:.2g}; its q_rope and k_rope are not "
                                              f"recorded): {RECIPROCAL}")
    cause = "rope_theta" if best.changes == {"theta"} else "rope_scaling"
    return Diagnosis(cause, name, f"attention recomputed from the reference's q, k and v with RoPE at "
                                  f"{describe_parameters(best.parameters, rotation.table.parameters)} where the "
                                  f"reference uses {describe_parameters(rotation.table.parameters)} reproduces the "
                                  f"candidate's {name} (rel error {residual:.2g}; its q_rope and k_rope are not "
                                  "recorded): the port's RoPE is built with other parameters than the checkpoint's config")


def _refined(table, tables, error):
    """A theta from the grid refined by golden-section search on its logarithm; other tables as they are."""
    if table.changes != {"theta"}:
        return table
    low, high = math.log(table.parameters["rope_theta"]) - 0.1, math.log(table.parameters["rope_theta"]) + 0.1
    for _ in range(30):
        a, b = high - 0.618 * (high - low), low + 0.618 * (high - low)
        below, above = (tables.make(table.changes, rope_theta=math.exp(x)) for x in (a, b))
        low, high = (low, b) if error(below) < error(above) else (a, high)
    refined = tables.make(table.changes, rope_theta=math.exp((low + high) / 2))
    return refined if refined is not None and error(refined) <= error(table) else table


def _prefix(tensor: np.ndarray, kind: str, count: int) -> np.ndarray:
    """The first `count` tokens' part: rows of attn_ctx (T, H*hd), the top-left block of attn_probs (H, T, S)."""
    return tensor[:, :count, :count] if kind == "attn_probs" else tensor[:count]
