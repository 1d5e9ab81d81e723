"""Norms fitted from their tensors: norm_weight_convention and norm_variant.

The reference's norm is fitted from its own input and output: y = gain * (x - mean?) /
sqrt(mean square + eps) + bias, over rows of the model's width (or of head_dim for
q_norm and k_norm), its per-channel gain and bias read off by least squares. The
candidate's output is then tested, from the candidate's own input, against the
same norm with one thing changed:
  - the gain plus or minus 1: Gemma's (1 + weight) applied to a weight stored whole,
    or a Gemma weight applied without its 1 (norm_weight_convention);
  - centred where the reference is not, or the reverse: LayerNorm for RMSNorm (norm_variant);
  - normalized over the whole row where the reference normalizes each head, or the reverse.
A wrong weight convention is undone by dividing the candidate by the gain it used and
multiplying by the reference's: `confirmed` when that restores the reference.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from parity.core.metrics import rel_l2
from parity.core.names import inputs_of
from parity.core.results import Diagnosis
from parity.diagnose import register
from parity.diagnose.context import Context, reproduces, rounding, widened
from parity.diagnose.repair import confirm

NORM_KINDS = ("attn_norm", "mlp_norm", "final_norm", "q_norm", "k_norm", "attn_post_norm", "mlp_post_norm")
HEAD_NORMS = ("q_norm", "k_norm")


@dataclass(frozen=True)
class Norm:
    """y = gain * normalize(x) + bias, normalizing rows of `group` values (centred for LayerNorm)."""

    centred: bool
    group: int
    eps: float
    gain: np.ndarray          # (width,)
    bias: np.ndarray          # (width,)

    def __repr__(self) -> str:
        return f"<Norm {'layer' if self.centred else 'rms'} over {self.group} eps={self.eps:g}>"

    def normalize(self, x: np.ndarray) -> np.ndarray:
        rows = x.reshape(-1, self.group)
        if self.centred:
            rows = rows - rows.mean(-1, keepdims=True)
        return (rows / np.sqrt(np.mean(rows * rows, axis=-1, keepdims=True) + self.eps)).reshape(x.shape)

    def __call__(self, x: np.ndarray) -> np.ndarray:
        return self.gain * self.normalize(x) + self.bias

    def describe(self) -> str:
        return f"{'LayerNorm (rows centred)' if self.centred else 'RMSNorm'} over {self.group} values"


def fit_norm(x: np.ndarray, y: np.ndarray, *, centred: bool, group: int, eps: float, with_bias: bool) -> Norm | None:
    """The per-channel gain (and bias) of a norm of this kind from its input and output, when it reproduces y."""
    if x.shape != y.shape or x.ndim != 2 or x.shape[-1] % group or x.shape[0] < 2:
        return None
    shape = Norm(centred, group, eps, np.ones(x.shape[-1]), np.zeros(x.shape[-1]))
    normalized = shape.normalize(x)
    if with_bias:
        mean_n, mean_y = normalized.mean(0), y.mean(0)
        variance = ((normalized - mean_n) ** 2).sum(0)
        if np.any(variance == 0):
            return None
        gain = ((normalized - mean_n) * (y - mean_y)).sum(0) / variance
        bias = mean_y - gain * mean_n
    else:
        energy = (normalized * normalized).sum(0)
        if np.any(energy == 0):
            return None
        gain, bias = (normalized * y).sum(0) / energy, np.zeros(x.shape[-1])
    norm = replace(shape, gain=gain, bias=bias)
    return norm if reproduces(y, norm(x)) else None


def reference_norm(context: Context, name: str, kind: str) -> Norm | None:
    """The reference's norm at `name`, fitted from its own input and output (once per diagnosis)."""
    def fitted():
        config = context.config
        source = inputs_of(name, context.reference.tensors)
        pair = context.pair(name)
        if not source or pair is None or config.norm_eps is None:
            return None
        x, y = widened(context.reference[source[0]]), pair[0]
        group = config.head_dim if kind in HEAD_NORMS and config.head_dim else y.shape[-1]
        layer = config.norm == "layer"
        return fit_norm(x, y, centred=layer, group=group, eps=config.norm_eps, with_bias=layer)

    return context.remember(("norm", name), fitted)


def candidate_input(context: Context, name: str) -> np.ndarray | None:
    """The candidate's own input to `name` (the reference's where the candidate does not record it)."""
    for trace in (context.candidate, context.reference):
        source = inputs_of(name, trace.tensors)
        if source and (name not in context.reference or trace.shape_of(source[0]) == context.reference.shape_of(name)):
            return widened(trace[source[0]])
    return None


def exactly(context: Context, name: str, norm: Norm) -> float:
    """How closely a norm hypothesis must reproduce the candidate: as closely as the reference's fitted norm
    reproduces the reference, or to the candidate's rounding."""
    source = inputs_of(name, context.reference.tensors)
    fitted = rel_l2(widened(context.reference[name]), norm(widened(context.reference[source[0]])))
    return max(10 * fitted, rounding(context.candidate.dtypes.get(name)))


def _norm_focus(context: Context):
    """(name, checkpoint, reference norm, candidate's input, exactness, reference, candidate) where the candidate
    is not the reference's norm of its own input (then the norm is right and its input is not)."""
    for name, checkpoint, reference, candidate in context.focused(*NORM_KINDS):
        norm = reference_norm(context, name, checkpoint.kind)
        x = candidate_input(context, name)
        if norm is None or x is None or x.shape != candidate.shape:
            continue
        exact = exactly(context, name, norm)
        if rel_l2(candidate, norm(x)) > exact:
            yield name, checkpoint, norm, x, exact, reference, candidate


@register("norm_weight_convention")
def norm_weight_convention(context: Context):
    """The candidate scales by the weight plus or minus 1: (1 + w) where the model stores w whole, or the reverse."""
    for name, _, norm, x, exact, reference, candidate in _norm_focus(context):
        for shift, what in ((1.0, "1 + weight where the model's weight is the whole scale (Gemma's convention "
                                  "applied to another family)"),
                            (-1.0, "the stored weight alone where the model scales by 1 + weight (Gemma's "
                                   "RMSNorm ported as Llama's)")):
            used = replace(norm, gain=norm.gain + shift)
            residual = context.consider(name, f"a norm scaling by the weight {shift:+g}", candidate, used(x), reference,
                                        exact=exact)
            if residual is None:
                continue
            diagnosis = Diagnosis("norm_weight_convention", name,
                                  f"the candidate's {name} is its input normalized and scaled by {what}: its fitted "
                                  f"per-channel scale is the reference's {shift:+g} (mean {float(np.mean(norm.gain + shift)):.3g} "
                                  f"against {float(np.mean(norm.gain)):.3g}; rel error {residual:.2g})")
            safe = np.abs(used.gain) > 1e-6
            repaired = np.where(safe, (candidate - norm.bias) / np.where(safe, used.gain, 1.0) * norm.gain + norm.bias,
                                norm(x))
            yield confirm(context, diagnosis, repaired, "dividing the candidate by the scale it used and "
                                                        "multiplying by the reference's")
            return


def _unbiased(rows: np.ndarray, eps: float) -> np.ndarray:
    return np.sqrt(np.sum(rows * rows, axis=-1, keepdims=True) / (rows.shape[-1] - 1) + eps)


def _mean_absolute(rows: np.ndarray, eps: float) -> np.ndarray:
    return np.mean(np.abs(rows), axis=-1, keepdims=True) + eps


SPREADS = ((_unbiased, "the mean square over n - 1 values where the reference divides by n (torch.var and std are "
                       "unbiased by default)"),
           (_mean_absolute, "the mean absolute value in place of the root mean square"))


def _spread_normalized(x: np.ndarray, norm: Norm, spread) -> np.ndarray:
    """x normalized as `norm` does, each row divided by `spread` of its values in place of their RMS."""
    rows = x.reshape(-1, norm.group)
    if norm.centred:
        rows = rows - rows.mean(-1, keepdims=True)
    return (rows / spread(rows, norm.eps)).reshape(x.shape)


@register("norm_variant")
def norm_variant(context: Context):
    """Another normalization: rows centred (LayerNorm) where the reference's are not (RMSNorm), or the
    reverse; each row normalized over another group (the whole q where the reference norms each head); the
    weight applied first; or each row divided by another spread (over n - 1, or its mean absolute value)."""
    config = context.config
    for name, checkpoint, norm, x, exact, reference, candidate in _norm_focus(context):
        variants = [(replace(norm, centred=not norm.centred),
                     f"{'RMSNorm' if norm.centred else 'LayerNorm (rows centred on their mean)'} where the reference "
                     f"uses {'LayerNorm' if norm.centred else 'RMSNorm'}")]
        if checkpoint.kind in HEAD_NORMS and norm.group != candidate.shape[-1]:
            variants.append((replace(norm, group=candidate.shape[-1]),
                             f"one norm over all {candidate.shape[-1] // norm.group} heads at once where the reference "
                             f"norms each head's {norm.group} values"))
        elif checkpoint.kind not in HEAD_NORMS and config.head_dim and candidate.shape[-1] % config.head_dim == 0 \
                and config.head_dim != candidate.shape[-1]:
            variants.append((replace(norm, group=config.head_dim),
                             f"each head's {config.head_dim} values normalized apart where the reference norms the "
                             f"whole row"))
        variants.append((lambda values, norm=norm: norm.normalize(values * norm.gain) + norm.bias,
                         "its weight applied before normalizing instead of after"))
        variants += [(lambda values, norm=norm, spread=spread: norm.gain * _spread_normalized(values, norm, spread)
                      + norm.bias, what) for spread, what in SPREADS]
        for variant, what in variants:
            residual = context.consider(name, f"a norm of another kind ({what})", candidate, variant(x), reference,
                                        exact=exact)
            if residual is not None:
                yield Diagnosis("norm_variant", name,
                                f"the candidate's {name} is its input normalized with {what} (rel error {residual:.2g}), "
                                f"with the reference's weights and epsilon")
                return
