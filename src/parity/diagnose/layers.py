"""Detectors for the rest of a block: norm_epsilon, activation_variant, missing_residual, nonfinite."""

from __future__ import annotations

import math

import numpy as np

from parity.core.metrics import rel_l2
from parity.core.names import inputs_of, parse
from parity.core.results import Diagnosis
from parity.diagnose import register
from parity.diagnose.activations import ACTIVATIONS
from parity.diagnose.context import Context, matches, reproduces, rounding, widened
from parity.diagnose.repair import confirm

NORM_KINDS = ("attn_norm", "mlp_norm", "final_norm", "q_norm", "k_norm")
EPS_SPREAD = 0.25  # per-row epsilon estimates must agree this closely to name one epsilon
NO_EPSILON = 1e-4  # an epsilon estimate this small beside the rows' mean square is none at all


def norm_rows(context: Context):
    """For each norm checkpoint in focus whose input the reference holds: (name, centred input rows,
    reference output rows, candidate output rows), (N, width) each. Nothing when the epsilon is unknown."""
    if context.config.norm_eps is None:
        return
    for name, checkpoint, reference, candidate in context.focused(*NORM_KINDS):
        source = inputs_of(name, context.reference.tensors)
        if not source:
            continue
        rows = _norm_rows(context.reference[source[0]].astype(np.float64), reference, candidate, context.config,
                          checkpoint.kind)
        if rows is not None:
            yield (name, *rows)


@register("norm_epsilon")
def norm_epsilon(context: Context):
    """A norm with another epsilon (or epsilon outside the square root), recovered from the per-row scale."""
    config = context.config
    for name, centred, y_reference, y_candidate in norm_rows(context):
        found = _fit_epsilon(centred, y_reference, y_candidate, config.norm_eps, config.norm == "layer")
        if found is not None:
            epsilon, inside = found
            where = "" if inside else ", added outside the square root"
            diagnosis = Diagnosis("norm_epsilon", name,
                                  f"the candidate normalizes with epsilon {epsilon:.3g}{' (none)' if not epsilon else ''}"
                                  f"{where} where the reference uses {config.norm_eps:.3g}")
            repaired = _rescaled_rows(centred, y_reference, y_candidate, config, epsilon, inside)
            yield confirm(context, diagnosis, None if repaired is None else repaired.reshape(context.reference.shape_of(name)),
                          "rescaling each row from the candidate's epsilon to the reference's")
            return


def _rescaled_rows(centred, y_reference, y_candidate, config, epsilon, inside):
    """The candidate's rows rescaled by root(candidate's epsilon) / root(reference's): the inverse of the epsilon."""
    ms = np.mean(centred * centred, axis=-1)
    gamma, beta = _fit_affine(centred / np.sqrt(ms + config.norm_eps)[:, None], y_reference, config.norm == "layer")
    if gamma is None:
        return None
    root = np.sqrt(ms + epsilon) if inside else np.sqrt(ms) + epsilon
    return (y_candidate - beta) * (root / np.sqrt(ms + config.norm_eps))[:, None] + beta


def _norm_rows(x, reference, candidate, config, kind):
    if kind in ("q_norm", "k_norm"):  # per-head norms: one row per (token, head)
        if not config.head_dim or x.shape != reference.shape:
            return None
        x, reference, candidate = (a.reshape(-1, config.head_dim) for a in (x, reference, candidate))
    if x.shape != reference.shape:
        return None
    centred = x - x.mean(-1, keepdims=True) if config.norm == "layer" else x
    return centred, reference, candidate


def _fit_epsilon(centred, y_reference, y_candidate, eps_reference, layer_norm):
    """Recover the candidate's epsilon from y = gamma * centred * c_row + beta, c_row = 1 / sqrt(ms + eps)."""
    ms = np.mean(centred * centred, axis=-1)                                    # (N,)
    normalized = centred / np.sqrt(ms + eps_reference)[:, None]
    gamma, beta = _fit_affine(normalized, y_reference, layer_norm)              # per feature
    if gamma is None:
        return None
    unscaled = (y_candidate - beta) / gamma                                     # = centred * c_row
    # a row of zeros (a padding token's zero embedding, and every per-head row made from it) has no scale
    energy = np.sum(centred * centred, axis=-1)
    rows = energy > 0
    if not rows.any():
        return None
    scale = np.sum(unscaled[rows] * centred[rows], axis=-1) / energy[rows]     # c_row per row
    if np.any(scale <= 0):
        return None
    fits = []                                                                  # (residual, epsilon, inside)
    for inside in (True, False):
        for epsilon in _epsilon_guesses(ms[rows], scale, eps_reference, inside):
            root = np.sqrt(ms + epsilon) if inside else np.sqrt(ms) + epsilon
            hypothesis = gamma * centred / root[:, None] + beta
            residual = matches(y_candidate, hypothesis, y_reference)
            if residual is not None:
                fits.append((residual, epsilon, inside))
    # rows of like mean square fit either placement (an epsilon outside the root reads as a smaller one inside),
    # and an epsilon far below them reads as none: the one that leaves less is named
    return min(fits)[1:] if fits else None


def _epsilon_guesses(ms, scale, eps_reference, inside):
    """The candidate's epsilon as the rows' scales give it (their median, when they agree on it), and none at all
    inside the root where that estimate is too small beside the rows' mean square to tell from none."""
    estimates = 1 / scale**2 - ms if inside else 1 / scale - np.sqrt(ms)
    epsilon = float(np.median(estimates))
    guesses = []
    if inside and abs(epsilon) <= NO_EPSILON * float(np.median(ms)) < eps_reference:
        guesses.append(0.0)
    # inside the root, the reference's own epsilon is no change; outside it, it is one
    if epsilon > 0 and not (inside and math.isclose(epsilon, eps_reference, rel_tol=0.05)) \
            and np.std(estimates) <= EPS_SPREAD * epsilon:
        guesses.append(epsilon)
    return guesses


def _fit_affine(normalized, y, with_bias):
    """Per-feature gamma (and beta for LayerNorm) from the reference's own output; None if it does not fit."""
    if with_bias:
        mean_n, mean_y = normalized.mean(0), y.mean(0)
        variance = ((normalized - mean_n) ** 2).sum(0)
        if np.any(variance == 0):
            return None, None
        gamma = ((normalized - mean_n) * (y - mean_y)).sum(0) / variance
        beta = mean_y - gamma * mean_n
    else:
        energy = (normalized * normalized).sum(0)
        if np.any(energy == 0):
            return None, None
        gamma, beta = (normalized * y).sum(0) / energy, np.zeros(y.shape[-1])
    if np.any(gamma == 0) or not reproduces(y, gamma * normalized + beta):
        return None, None
    return gamma, beta




@register("activation_variant")
def activation_variant(context: Context):
    """The MLP activation is another function (SiLU for GELU, erf-GELU for tanh-GELU, ...)."""
    for name, checkpoint, reference, candidate in context.focused("mlp_act"):
        layer = f"layers.{checkpoint.layer}"
        gate = context.reference.tensors.get(f"{layer}.mlp_gate", context.reference.tensors.get(f"{layer}.mlp_fc"))
        if gate is None:
            continue
        up = context.reference.tensors.get(f"{layer}.mlp_up")
        outputs = {label: f(gate.astype(np.float64)) * (1.0 if up is None else up.astype(np.float64))
                   for label, f in ACTIVATIONS.items()}
        used = min(outputs, key=lambda label: rel_l2(reference, outputs[label]))
        if not reproduces(reference, outputs[used]):
            continue
        for label, output in outputs.items():
            if label != used and matches(candidate, output, reference) is not None:
                yield Diagnosis("activation_variant", name,
                                f"the candidate's MLP applies {label} where the reference applies {used}")
                return
        if up is not None:
            yield from _placement(context, name, layer, ACTIVATIONS[used], used, reference, candidate)
            return


def _placement(context: Context, name: str, layer: str, act, label: str, reference, candidate):
    """The activation applied to another operand of the gated product, from the candidate's own gate and up:
    to both, after the product, or not at all."""
    from parity.diagnose.identities import slot_tensor

    gate, up = slot_tensor(context, f"{layer}.mlp_gate", f"{layer}.mlp_gate"), slot_tensor(context, f"{layer}.mlp_up", f"{layer}.mlp_up")
    if gate is None or up is None or gate.shape != candidate.shape:
        return
    exact = 10 * rounding(context.candidate.dtypes.get(name))
    for where, hypothesis in (("to both mlp_gate and mlp_up", act(gate) * act(up)),
                              ("after the product mlp_gate * mlp_up", act(gate * up)),
                              ("nowhere (mlp_gate * mlp_up)", gate * up)):
        residual = context.consider(name, f"{label} applied {where}", candidate, hypothesis, reference, exact=exact)
        if residual is not None:
            yield Diagnosis("activation_variant", name,
                            f"the candidate's own tensors give {name} = {label} applied {where} (rel error "
                            f"{residual:.2g}), where the model computes {label}(mlp_gate) * mlp_up")
            return


@register("missing_residual")
def missing_residual(context: Context):
    """The block output (or the state after attention) lacks the residual input."""
    for name, checkpoint, reference, candidate in context.focused("resid_mid", "out"):
        branch = f"layers.{checkpoint.layer}." + ("attn_out" if checkpoint.kind == "resid_mid" else "mlp_out")
        if branch not in context.reference:
            continue
        if matches(candidate, widened(context.reference[branch]), reference) is not None:
            which = "attention" if checkpoint.kind == "resid_mid" else "MLP"
            yield Diagnosis("missing_residual", name,
                            f"the candidate's {name} equals the {which} branch alone ({branch}): the residual "
                            f"connection around the {which} is missing")
            return


@register("nonfinite")
def nonfinite(context: Context):
    """Where the first NaN or Inf appears, and whether it is an overflow."""
    for result in context.comparison.checkpoints:
        metrics = result.metrics
        if metrics is None or metrics.nan_candidate + metrics.inf_candidate <= metrics.nan_reference + metrics.inf_reference:
            continue
        candidate = widened(context.candidate[result.name])
        bad = ~np.isfinite(candidate)
        checkpoint = parse(result.name)
        axis = checkpoint.token_axis if checkpoint else 0
        positions = sorted({int(p) for p in np.argwhere(bad)[:, axis]}) if candidate.ndim > axis else []
        overflow = metrics.inf_candidate > 0
        largest = float(np.abs(candidate[np.isfinite(candidate)]).max(initial=0.0))
        cause = (f"an overflow: {metrics.inf_candidate} values are infinite (largest finite magnitude {largest:.3g})"
                 if overflow else f"{metrics.nan_candidate} NaN values, with no infinity before them (0/0, the root "
                 "of a negative, or a NaN in the weights)")
        yield Diagnosis("nonfinite", result.name,
                        f"the first non-finite values appear at {result.name}, token positions {positions[:8]}: {cause}")
        return
