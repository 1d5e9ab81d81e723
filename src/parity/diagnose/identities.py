"""Identities inside a trace: relations every correct forward satisfies among its own tensors.

    resid_mid = layer input + attn_out          (attn_post_norm where the family norms the branch)
    out       = resid_mid + mlp_out             (parallel blocks: input + attn_out + mlp_out)
    mlp_act   = act(mlp_gate) * mlp_up          (act(mlp_fc) without a gate)
    attn_ctx  = attn_probs @ v                  (query head h reading KV head h // (H / Hkv))
    norm      = weight * input / rms(input)     (the weight fitted from the reference; norms.py)
    q         = attn_norm @ q.weight^T (+ q.bias)   (and each op that is one linear map of one checkpoint,
                                                where the traces record its weight: --weights, or the
                                                first divergence's, read after the check)

(softmax normalization and the mask's zero pattern are in masks.py, RoPE's rotation in
rope_fit.py). Each is checked on the candidate's own trace and calibrated by the
reference's: an identity fails when the candidate's tensors leave more than
MARGIN times the reference's residual, and more than its precision's rounding.
A failing identity says the op that makes the checkpoint is wrong, whatever its
inputs. residual_scale: a sum whose terms are all there, one scaled (the branch
halved, a residual multiplier applied twice), read off by least squares.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from parity.core.metrics import rel_l2
from parity.core.results import Diagnosis
from parity.diagnose import register
from parity.diagnose.context import Context, attended_values, layer_facts, rounding, widened
from parity.diagnose.activations import ACTIVATIONS
from parity.diagnose.repair import confirm

MARGIN = 10.0
SCALES = (("1/2", 0.5), ("2", 2.0), ("1/sqrt(2)", 2 ** -0.5), ("sqrt(2)", 2 ** 0.5), ("0", 0.0), ("-1", -1.0))


@dataclass(frozen=True)
class Identity:
    """output = combine(slots): what a correct forward's tensors satisfy."""

    text: str                                       # "resid_mid = layer input + attn_out"
    output: str                                     # the checkpoint it makes
    slots: tuple[str, ...]                          # the checkpoints it reads
    combine: Callable[[list[np.ndarray]], np.ndarray]
    kind: str                                       # "sum", "product", "attention"
    coefficients: tuple[float, ...] = ()            # a sum's, slot by slot

    def __repr__(self) -> str:
        return f"<Identity {self.text}>"


@dataclass(frozen=True)
class Check:
    identity: Identity
    candidate: float          # rel_l2 the candidate's own tensors leave
    reference: float          # ... and the reference's
    floor: float

    @property
    def failed(self) -> bool:
        return self.candidate > max(MARGIN * self.reference, self.floor)

    def describe(self) -> str:
        how = "break" if self.failed else "keep"
        return (f"the candidate's own tensors {how} {self.identity.text} (rel_l2 {self.candidate:.2g}; the reference's "
                f"{self.reference:.2g})")


def block_input(layer: int) -> str:
    return "embed" if layer == 0 else f"layers.{layer - 1}.out"


def _sum(coefficients: tuple[float, ...]):
    return lambda tensors: sum(c * t for c, t in zip(coefficients, tensors))


def _activation(context: Context, layer: int) -> Callable | None:
    """The activation that makes the reference's own MLP identity hold (tried once per layer)."""
    def found():
        tensors = context.reference.tensors
        gate = tensors.get(f"layers.{layer}.mlp_gate", tensors.get(f"layers.{layer}.mlp_fc"))
        act = tensors.get(f"layers.{layer}.mlp_act")
        if gate is None or act is None or gate.shape[0] != act.shape[0]:
            return None
        up = tensors.get(f"layers.{layer}.mlp_up")
        gate = widened(gate)
        for label in _activation_order(context.config.activation):
            hypothesis = ACTIVATIONS[label](gate) * (1.0 if up is None else widened(up))
            if hypothesis.shape == act.shape and rel_l2(widened(act), hypothesis) <= 1e-3:
                return label
        return None

    label = context.remember(("activation", layer), found)
    return None if label is None else ACTIVATIONS[label]


def _activation_order(configured: str | None) -> list[str]:
    return sorted(ACTIVATIONS, key=lambda label: label != configured)


def identities(context: Context, name: str) -> list[Identity]:
    """The identities that define `name` in this model, from the names the reference records."""
    from parity.core.names import parse

    checkpoint = parse(name)
    if checkpoint is None:
        return []
    found = _linear(context, name, checkpoint)
    if checkpoint.layer is None:
        return found
    layer, names = checkpoint.layer, context.reference.tensors
    at = f"layers.{layer}."
    facts = layer_facts(context.config, layer)
    multiplier = context.config.architecture.get("residual_multiplier") or 1.0
    kind = checkpoint.kind
    if kind == "resid_mid":
        branch = at + ("attn_post_norm" if at + "attn_post_norm" in names else "attn_out")
        found.append(Identity(f"{name} = {block_input(layer)} + {multiplier:g} x {branch}", name,
                              (block_input(layer), branch), _sum((1.0, multiplier)), "sum", (1.0, multiplier)))
    elif kind == "out":
        branch = at + ("mlp_post_norm" if at + "mlp_post_norm" in names else "mlp_out")
        if facts.get("parallel") or at + "resid_mid" not in names:
            if at + "attn_out" in names:
                found.append(Identity(f"{name} = {block_input(layer)} + {at}attn_out + {branch}", name,
                                      (block_input(layer), at + "attn_out", branch), _sum((1.0, 1.0, 1.0)), "sum",
                                      (1.0, 1.0, 1.0)))
        else:
            found.append(Identity(f"{name} = {at}resid_mid + {multiplier:g} x {branch}", name,
                                  (at + "resid_mid", branch), _sum((1.0, multiplier)), "sum", (1.0, multiplier)))
    elif kind == "mlp_act":
        act = _activation(context, layer)
        if act is not None and at + "mlp_gate" in names and at + "mlp_up" in names:
            found.append(Identity(f"{name} = act({at}mlp_gate) * {at}mlp_up", name, (at + "mlp_gate", at + "mlp_up"),
                                  lambda tensors, act=act: act(tensors[0]) * tensors[1], "product"))
        elif act is not None and at + "mlp_fc" in names:
            found.append(Identity(f"{name} = act({at}mlp_fc)", name, (at + "mlp_fc",),
                                  lambda tensors, act=act: act(tensors[0]), "product"))
    elif kind == "attn_ctx":
        config = context.config
        value = attended_values(at, names)
        if config.heads and config.kv_heads and config.head_dim and at + "attn_probs" in names and value in names:
            combine = attention_product(config.heads, config.kv_heads, config.head_dim)
            found.append(Identity(f"{name} = {at}attn_probs @ {value} (query head h reading KV head h // "
                                  f"{config.heads // config.kv_heads})", name, (at + "attn_probs", value),
                                  combine, "attention"))
    return [identity for identity in found if all(slot in names for slot in identity.slots)]


# The checkpoints one linear map of one other checkpoint makes: name = input @ name.weight^T (+ name.bias).
LINEAR_INPUTS = {"q": "attn_norm", "k": "attn_norm", "v": "attn_norm", "qkv": "attn_norm", "attn_out": "attn_ctx",
                 "mlp_gate": "mlp_norm", "mlp_up": "mlp_norm", "mlp_fc": "mlp_norm", "mlp_gate_up": "mlp_norm",
                 "mlp_out": "mlp_act", "lm_head_out": "final_norm", "logits": "final_norm"}


def _linear(context: Context, name: str, checkpoint) -> list[Identity]:
    """`name` as the linear map of its input, where the reference records the map's weight."""
    names = context.reference.tensors
    source = LINEAR_INPUTS.get(checkpoint.kind)
    if source is None or f"{name}.weight" not in names:
        return []
    if checkpoint.kind == "logits" and "lm_head_out" in names:
        return []   # the head's output is capped or scaled into the logits
    if checkpoint.layer is not None:
        if checkpoint.kind == "mlp_out" and f"layers.{checkpoint.layer}.moe_router_logits" in names:
            return []   # an MoE block's output is its experts' weighted sum
        source = f"layers.{checkpoint.layer}.{source}"
    if source not in names:
        return []
    bias = (f"{name}.bias",) if f"{name}.bias" in names else ()
    return [Identity(f"{name} = {source} @ {name}.weight^T{' + ' + bias[0] if bias else ''}", name,
                     (source, f"{name}.weight", *bias), linear_map, "linear")]


def linear_map(tensors: list[np.ndarray]) -> np.ndarray:
    """input (T, in), weight (out, in)[, bias (out,)] -> (T, out)."""
    inputs, weight = tensors[0], tensors[1]
    if weight.ndim != 2 or inputs.ndim != 2 or inputs.shape[-1] != weight.shape[1]:
        return np.full((1,), np.nan)
    output = inputs @ weight.T
    return output + tensors[2] if len(tensors) > 2 else output


def attention_product(heads: int, kv_heads: int, head_dim: int, kv_of_head=None):
    """probs (H, T, S) and v (S, Hkv*hd) -> context (T, H*hd), query head h reading KV head kv_of_head(h)."""
    group = heads // kv_heads
    kv_of_head = kv_of_head or (lambda h: h // group)

    def combine(tensors: list[np.ndarray]) -> np.ndarray:
        probs, v = tensors
        if probs.ndim != 3 or probs.shape[0] != heads or v.ndim != 2 or v.shape[-1] != kv_heads * head_dim \
                or probs.shape[-1] != v.shape[0]:
            return np.full((1,), np.nan)
        values = v.reshape(v.shape[0], kv_heads, head_dim)                               # (S, Hkv, hd)
        order = [kv_of_head(h) for h in range(heads)]
        context = np.einsum("hts,shd->thd", probs, values[:, order])                     # (T, H, hd)
        return context.reshape(probs.shape[1], heads * head_dim)

    return combine


def slot_tensor(context: Context, name: str, shape_of: str | None = None) -> np.ndarray | None:
    """The candidate's own tensor for `name`, else the reference's (when the candidate does not record it)."""
    for trace in (context.candidate, context.reference):
        if name in trace and (shape_of is None or trace.shape_of(name) == context.reference.shape_of(shape_of)):
            return widened(trace[name])
    return None


def residual(identity: Identity, output: np.ndarray, tensors: list[np.ndarray]) -> float:
    with np.errstate(all="ignore"):
        expected = identity.combine(tensors)
    if expected.shape != output.shape or not np.all(np.isfinite(expected)):
        return math.inf
    return rel_l2(output, expected)


def checks(context: Context, name: str) -> list[Check]:
    """Each identity of `name` on both traces (once per diagnosis)."""
    def computed():
        found = []
        for identity in identities(context, name):
            output = slot_tensor(context, name)
            tensors = [slot_tensor(context, slot, slot) for slot in identity.slots]
            if output is None or any(t is None for t in tensors) or name not in context.candidate:
                continue
            reference = residual(identity, widened(context.reference[name]),
                                 [widened(context.reference[slot]) for slot in identity.slots])
            floor = max(rounding(context.candidate.dtypes.get(name)),
                        *(rounding(context.candidate.dtypes.get(slot)) for slot in identity.slots if slot in context.candidate))
            if math.isfinite(reference):
                found.append(Check(identity, residual(identity, output, tensors), reference, floor))
        return found

    return context.remember(("identities", name), computed)


@register("residual_scale")
def residual_scale(context: Context):
    """A residual sum with every term present, one of them scaled: coefficients by least squares."""
    for name, _, reference, candidate in context.focused("resid_mid", "out"):
        for check in checks(context, name):
            if not check.failed or check.identity.kind != "sum":
                continue
            identity = check.identity
            terms = [slot_tensor(context, slot, slot) for slot in identity.slots]
            fitted = _coefficients(candidate, terms)
            if fitted is None:
                continue
            coefficients, left = fitted
            if left > max(MARGIN * check.reference, check.floor):
                continue   # not a sum of these terms
            changed = [i for i, (a, b) in enumerate(zip(coefficients, identity.coefficients)) if abs(a - b) > 0.02 * max(1, abs(b))]
            if len(changed) != 1 or abs(coefficients[changed[0]]) < 0.02:
                continue   # a term left out is missing_residual's; several changed is no one scale
            index = changed[0]
            ratio = coefficients[index] / identity.coefficients[index]
            terms_text = " + ".join(f"{a:.3g} x {slot}" for a, slot in zip(coefficients, identity.slots))
            diagnosis = Diagnosis("residual_scale", name,
                                  f"the candidate's own tensors give {name} = {terms_text} where the model adds "
                                  f"{identity.text.split(' = ', 1)[1]}: {identity.slots[index]} enters the sum scaled by "
                                  f"{ratio:.4g}{scale_label(ratio, context)} (least squares, rel_l2 left {left:.2g})")
            repaired = candidate + (identity.coefficients[index] - coefficients[index]) * terms[index]
            yield confirm(context, diagnosis, repaired, f"adding back {identity.slots[index]} at its model coefficient")
            return


def _coefficients(output: np.ndarray, terms: list[np.ndarray]) -> tuple[np.ndarray, float] | None:
    basis = np.stack([t.reshape(-1) for t in terms], axis=1)                      # (N, k)
    target = output.reshape(-1)
    solution, *_ = np.linalg.lstsq(basis, target, rcond=None)
    if not np.all(np.isfinite(solution)):
        return None
    return solution, rel_l2(target, basis @ solution)


def scale_label(factor: float, context: Context) -> str:
    """' = 1/sqrt(head_dim)' and the like, when a factor is one of the widths a port scales by, or its inverse."""
    config = context.config
    widths = [(config.head_dim, "head_dim"), (config.hidden, "hidden_size"), (config.layers, "num_layers")]
    known = [(value, label) for label, value in SCALES if value not in (0.0, -1.0)]
    for width, label in widths:
        if width:
            known += [(width ** 0.5, f"sqrt({label})"), (width ** -0.5, f"1/sqrt({label})"), (float(width), label),
                      (1 / width, f"1/{label}")]
    multiplier = config.architecture.get("residual_multiplier")
    if multiplier:
        known += [(multiplier, "residual_multiplier"), (multiplier ** 2, "residual_multiplier twice")]
    for value, label in known:
        if value and abs(factor / value - 1) < 0.02:
            return f" = {label}"
    return ""
