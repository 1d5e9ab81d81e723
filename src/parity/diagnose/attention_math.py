"""Detectors that recompute attention from the reference's own q, k and v under another
hypothesis: attention_scale (a softmax temperature, or the scale applied after the softmax),
swapped_operands (q and k, or k and v, used in each other's place), and the causal mask, the
softmax's normalization and the KV heads read (kv_heads.py) when only attn_ctx is visible.

Each works at attn_probs when the candidate records them and at attn_ctx otherwise
(nanoGPT's flash path hides the probabilities). The reference's own tensors must
reproduce the reference under the standard hypothesis before an alternative is trusted.
"""

from __future__ import annotations

import math

import numpy as np

from parity.core.metrics import measure, rel_l2
from parity.core.names import parse
from parity.core.results import Diagnosis
from parity.diagnose import register
from parity.diagnose.context import Context, layer_facts, matches, reproduces, widened
from parity.diagnose.repair import confirm

SCALE_STEPS = 241   # log-spaced scales searched, from head_dim^-2 to head_dim
SCALE_SAME = 0.02   # a fitted scale within 2% of the reference's is the reference's
WITHIN_NOISE = 0.5  # a hypothesis inside the calibrated tolerance must also halve the error


def attend(q: np.ndarray, k: np.ndarray, v: np.ndarray | None, *, heads: int, kv_heads: int, head_dim: int,
           scale: float, causal: bool = True, visible: np.ndarray | None = None,
           softcap: float | None = None, normalize=None) -> tuple[np.ndarray, np.ndarray | None]:
    """softmax(scale q k^T) and its product with v, from (T, H*hd), (S, Hkv*hd), (S, Hkv*hd):
    (probs (H, T, S), context (T, H*hd) or None). Query head h reads KV head h // (H / Hkv).
    `visible` (T, S), when given, is the mask (a sliding window's band) in place of the causal one;
    `softcap` caps the scores with cap * tanh(scores / cap) (Gemma 2); `normalize`, when given, makes the
    probabilities from the masked scores (H, T, S) in place of the softmax along the keys."""
    count, group = q.shape[0], heads // kv_heads
    q_heads = q.reshape(count, heads, head_dim).transpose(1, 0, 2)                            # (H, T, hd)
    k_heads = np.repeat(k.reshape(k.shape[0], kv_heads, head_dim).transpose(1, 0, 2), group, axis=0)  # (H, S, hd)
    scores = scale * q_heads @ k_heads.transpose(0, 2, 1)                                      # (H, T, S)
    if softcap:
        scores = softcap * np.tanh(scores / softcap)
    if visible is not None and causal:
        scores = np.where(visible[None], scores, -np.inf)
    elif causal:
        scores = np.where(np.triu(np.ones(scores.shape[-2:], dtype=bool), k=1 + scores.shape[-1] - count),
                          -np.inf, scores)
    if normalize is not None:
        probs = normalize(scores)
    else:
        scores = scores - scores.max(-1, keepdims=True)
        probs = np.exp(scores)
        probs /= probs.sum(-1, keepdims=True)
    if v is None:
        return probs, None
    v_heads = np.repeat(v.reshape(v.shape[0], kv_heads, head_dim).transpose(1, 0, 2), group, axis=0)  # (H, S, hd)
    return probs, (probs @ v_heads).transpose(1, 0, 2).reshape(count, heads * head_dim)        # (T, H*hd)


def expanded_heads(x: np.ndarray, kv_heads: int, head_dim: int, reads: list[int]) -> np.ndarray:
    """(S, Hkv*hd) -> (S, H*hd): KV head reads[h] for query head h."""
    return x.reshape(x.shape[0], kv_heads, head_dim)[:, reads].reshape(x.shape[0], -1)


class _Attention:
    """The reference's q, k, v of one layer (after RoPE where there is one) and the model's shape."""

    def __init__(self, context: Context, layer: int) -> None:
        tensors, config = context.reference.tensors, context.config
        self.q, self.k, self.v = (next((tensors[f"layers.{layer}.{kind}"].astype(np.float64)
                                        for kind in (f"{x}_rope", f"{x}_norm", x) if f"layers.{layer}.{kind}" in tensors),
                                       None) for x in "qkv")
        self.heads, self.kv_heads, self.head_dim = config.heads, config.kv_heads, config.head_dim
        facts = layer_facts(config, layer)
        self.standard = facts.get("attn_scaling") or (self.head_dim ** -0.5 if self.head_dim else None)
        self.softcap = facts.get("attn_logit_softcapping")
        self.visible = _reference_mask(context, layer, facts)

    @property
    def scores_usable(self) -> bool:
        """q and k are there: the probabilities can be recomputed (the context needs v too)."""
        return (all(x is not None for x in (self.q, self.k, self.heads, self.kv_heads, self.head_dim))
                and self.q.shape[-1] == self.heads * self.head_dim and self.k.shape[-1] == self.kv_heads * self.head_dim)

    @property
    def usable(self) -> bool:
        return (all(x is not None for x in (self.q, self.k, self.v, self.heads, self.kv_heads, self.head_dim))
                and self.q.shape[-1] == self.heads * self.head_dim and self.k.shape == self.v.shape)

    def output(self, kind: str, *, q=None, k=None, v=None, scale: float | None = None, causal: bool = True,
               tokens: int | None = None, visible: np.ndarray | None = None, normalize=None,
               key_heads: list[int] | None = None, value_heads: list[int] | None = None):
        """attn_probs or attn_ctx under a hypothesis (the reference's tensors where none is given), over the first
        `tokens` tokens (every one when None; causal attention of those depends on them alone); `visible`, a
        mask in place of the reference's; `normalize`, as attend's; `key_heads`/`value_heads`, the KV head
        each query head reads (h // group where None)."""
        q, k, v = (self.q if q is None else q), (self.k if k is None else k), (self.v if v is None else v)
        if tokens is not None:
            q, k, v = q[:tokens], k[:tokens], v[:tokens]
        kv_heads = self.kv_heads
        if key_heads is not None or value_heads is not None:
            group = self.heads // self.kv_heads
            reads = [h // group for h in range(self.heads)]
            k = expanded_heads(k, kv_heads, self.head_dim, key_heads or reads)
            v = None if v is None else expanded_heads(v, kv_heads, self.head_dim, value_heads or reads)
            kv_heads = self.heads
        scale = self.standard if scale is None else scale
        mask = self.visible if visible is None else visible
        if mask is not None and tokens is not None:
            mask = mask[:tokens, :tokens]
        mask = mask if mask is not None and mask.shape == (q.shape[0], k.shape[0]) else None
        probs, ctx = attend(q, k, v, heads=self.heads, kv_heads=kv_heads, head_dim=self.head_dim,
                            scale=scale, causal=causal, visible=mask, softcap=self.softcap, normalize=normalize)
        return probs if kind == "attn_probs" else ctx


def _reference_mask(context: Context, layer: int, facts: dict) -> np.ndarray | None:
    """The mask of the reference's layer: its probabilities' band, or the window its trace records."""
    from parity.diagnose.bands import Band, fit_band

    name = f"layers.{layer}.attn_probs"
    if name in context.reference:
        band = fit_band(widened(context.reference[name]), context.reference.dtypes.get(name))
        if band is not None:
            return band.visible()
    window = facts.get("sliding_window")
    q = context.reference.tensors.get(f"layers.{layer}.q")
    if isinstance(window, int) and q is not None:
        return Band(0, window, q.shape[0], q.shape[0]).visible()
    return None


def explains(context: Context, name: str, candidate: np.ndarray, hypothesis: np.ndarray,
              reference: np.ndarray) -> float | None:
    """rel_l2 of the candidate against the hypothesis when it explains the candidate: by the common
    rule, or, with a calibrated tolerance, when the hypothesis is within it and the reference is not
    (an attention bug whose effect is a few times the bfloat16 noise): by rel_l2, or, where the checkpoint
    failed on its worst position, by every bound the comparison applied."""
    residual = matches(candidate, hypothesis, reference)
    if residual is not None:
        return residual
    result = context.comparison.result(name)
    tolerance = result.tolerance if result is not None else None
    if tolerance is None or not tolerance.calibrated or hypothesis.shape != candidate.shape:
        return None
    residual, error = rel_l2(hypothesis, candidate), rel_l2(reference, candidate)
    if residual > WITHIN_NOISE * error or not np.all(np.isfinite(hypothesis)):
        return None
    if residual <= tolerance.max_rel_l2 < error:
        return residual
    checkpoint = parse(name)
    admitted = tolerance.admits(measure(hypothesis, candidate, tolerance,
                                        token_axis=checkpoint.token_axis if checkpoint else 0))
    return residual if admitted and result.status == "fail" else None


def attention_focus(context: Context):
    """(name, kind, attention, reference, candidate) at the focus attn_probs/attn_ctx whose reference
    the standard attention of the reference's own q, k, v reproduces."""
    for name, checkpoint, reference, candidate in context.focused("attn_probs", "attn_ctx"):
        attention = _Attention(context, checkpoint.layer)
        if attention.usable and reproduces(reference, attention.output(checkpoint.kind)):
            yield name, checkpoint.kind, attention, reference, candidate


@register("attention_scale")
def attention_scale(context: Context):
    """The scores are scaled by another factor (1/head_dim for 1/sqrt(head_dim)): a softmax temperature."""
    for name, kind, attention, reference, candidate in attention_focus(context):
        after = _scale_after_softmax(context, name, kind, attention, reference, candidate)
        if after is not None:
            yield after
            return
        standard = attention.standard
        scale, residual = fit_scale(lambda s: attention.output(kind, scale=s), candidate, attention.head_dim)
        if abs(scale / standard - 1) <= SCALE_SAME:
            continue
        if explains(context, name, candidate, attention.output(kind, scale=scale), reference) is None:
            continue
        diagnosis = Diagnosis("attention_scale", name,
                              f"recomputing attention from the reference's q, k and v with the scores scaled by "
                              f"{scale:.4g}{scale_label(scale, attention.head_dim, context.config.hidden)} where the "
                              f"model scales by {standard:.4g}{scale_label(standard, attention.head_dim, context.config.hidden)} "
                              f"reproduces the candidate's {name} (rel error {residual:.2g}): a softmax temperature of "
                              f"{standard / scale:.3g}")
        yield confirm(context, diagnosis, _rescaled(attention, kind, candidate, scale, standard),
                      f"rescaling the candidate's scores by {standard / scale:.4g}")
        return


def _scale_after_softmax(context: Context, name: str, kind: str, attention: "_Attention", reference, candidate):
    """The scores' scale applied to the probabilities, after a softmax of unscaled scores, seen in attn_ctx
    alone (the probabilities, recorded, show it as rows that do not sum to 1: softmax_normalization)."""
    if kind != "attn_ctx" or name.replace("attn_ctx", "attn_probs") in context.candidate:
        return None
    standard = attention.standard
    residual = explains(context, name, candidate, standard * attention.output(kind, scale=1.0), reference)
    if residual is None:
        return None
    return Diagnosis("attention_scale", name,
                     f"attention recomputed from the reference's q, k and v with the scores unscaled and the "
                     f"probabilities multiplied by {standard:.4g}{scale_label(standard, attention.head_dim)} after "
                     f"the softmax reproduces the candidate's {name} (rel error {residual:.2g}; its probabilities "
                     f"are not recorded): the scale is applied after the softmax, where it belongs to the scores "
                     f"before it")


def _rescaled(attention: "_Attention", kind: str, candidate: np.ndarray, scale: float, standard: float):
    """The candidate's probabilities with their scores rescaled: p^(standard / scale) per row, renormalized
    (a softmax's log is its scores less a per-row constant). None for attn_ctx: no scores to rescale."""
    if kind != "attn_probs" or not np.all(np.isfinite(candidate)) or np.any(candidate < 0):
        return None
    with np.errstate(divide="ignore"):
        powered = np.where(candidate > 0, np.exp((standard / scale) * np.log(np.where(candidate > 0, candidate, 1.0))), 0.0)
    sums = powered.sum(-1, keepdims=True)
    return np.divide(powered, sums, out=np.zeros_like(powered), where=sums > 0)


def fit_scale(output, candidate: np.ndarray, head_dim: int) -> tuple[float, float]:
    """The score scale whose attention is closest to the candidate: a log-spaced search, then a refinement."""
    def error(log_scale: float) -> float:
        hypothesis = output(math.exp(log_scale))
        return float(np.linalg.norm(hypothesis - candidate)) if np.all(np.isfinite(hypothesis)) else math.inf

    grid = np.linspace(-2 * math.log(head_dim), math.log(head_dim), SCALE_STEPS)
    errors = [error(x) for x in grid]
    best = int(np.argmin(errors))
    low, high = grid[max(best - 1, 0)], grid[min(best + 1, len(grid) - 1)]
    for _ in range(30):  # golden-section search between the best grid point's neighbours
        a, b = high - 0.618 * (high - low), low + 0.618 * (high - low)
        low, high = (low, b) if error(a) < error(b) else (a, high)
    log_scale = (low + high) / 2
    norm = float(np.linalg.norm(candidate)) or 1.0
    return math.exp(log_scale), error(log_scale) / norm


def scale_label(scale: float, head_dim: int, hidden: int | None = None) -> str:
    known = [(head_dim ** -0.5, "1/sqrt(head_dim)"),
             (1 / head_dim, "1/head_dim: divided by head_dim, or by sqrt(head_dim) twice"),
             (1.0, "1: no scaling"), (head_dim ** 0.5, "sqrt(head_dim): multiplied instead of divided"),
             (head_dim ** -0.25, "1/head_dim^(1/4): sqrt(head_dim) applied to q and k each")]
    if hidden:
        known += [(hidden ** -0.5, "1/sqrt(hidden_size): the model's width taken for the head's"),
                  (1 / hidden, "1/hidden_size"), (hidden ** 0.5, "sqrt(hidden_size)")]
    for value, label in known:
        if abs(scale / value - 1) <= SCALE_SAME:
            return f" (= {label})"
    return ""


SWAPS = (("q", "k"), ("k", "v"), ("q", "v"))


@register("swapped_operands")
def swapped_operands(context: Context):
    """Two of q, k, v used in each other's place (a fused projection split in the wrong order, with
    the checkpoints tapped before the mistake): recomputed from the reference's own tensors."""
    for name, kind, attention, reference, candidate in attention_focus(context):
        tensors = {"q": attention.q, "k": attention.k, "v": attention.v}
        for first, second in SWAPS:
            if tensors[first].shape != tensors[second].shape or (kind == "attn_probs" and "v" in (first, second)):
                continue
            swapped = {**tensors, first: tensors[second], second: tensors[first]}
            residual = explains(context, name, candidate, attention.output(kind, **swapped), reference)
            if residual is not None:
                yield Diagnosis("swapped_operands", name,
                                f"attention recomputed from the reference's tensors with {first} and {second} "
                                f"exchanged reproduces the candidate's {name} (rel error {residual:.2g}): the "
                                f"candidate uses {second} as {first} and {first} as {second}, e.g. a fused QKV "
                                "output split in the wrong order after the point where it is recorded")
                return


def masks_from_context(context: Context, cause: str):
    """The causal mask or a sliding window seen in attn_ctx alone (a fused kernel, or the softmax inline): the
    reference's q, k, v attended under each other band of visible keys (keys past the query's own position;
    a window narrower, wider, absent, or where the model has none), scored on the first MASK_TOKENS queries;
    the best band, recomputed over every query, must explain the candidate's attn_ctx. Yields the diagnosis
    of `cause` ("causal_mask": the band's top edge differs; "sliding_window": its width alone)."""
    from parity.diagnose.bands import Band

    for name, kind, attention, reference, candidate in attention_focus(context):
        if kind != "attn_ctx" or name.replace("attn_ctx", "attn_probs") in context.candidate:
            continue
        tokens = attention.q.shape[0]
        window = _reference_window(attention, tokens)
        if window is None or tokens < 3:
            continue
        count = min(MASK_TOKENS, tokens)

        def output(band: Band, rows: int) -> np.ndarray:
            return attention.output(kind, tokens=rows, visible=Band(band.ahead, band.window, rows, rows).visible())

        bands = [Band(ahead, width, tokens, tokens) for ahead, width in _other_bands(window, tokens)]
        scored = [(rel_l2(candidate[:count], output(band, count)), band) for band in bands]
        error, best = min(scored, key=lambda pair: pair[0])
        if error >= rel_l2(candidate[:count], reference[:count]):
            continue
        residual = explains(context, name, candidate, output(best, tokens), reference)
        if residual is None:
            continue
        found = "causal_mask" if best.ahead != 0 else "sliding_window"
        if found == cause:
            yield Diagnosis(cause, name, f"attention recomputed from the reference's q, k and v with "
                                         f"{_band_words(best, tokens)} where the reference has "
                                         f"{_band_words(Band(0, window, tokens, tokens), tokens)} reproduces the "
                                         f"candidate's {name} (rel error {residual:.2g}; its probabilities are not "
                                         f"recorded){_mask_advice(best, window, tokens)}")
        return


MASK_TOKENS = 64      # bands are scored on the attention of this many first queries


def softmax_from_context(context: Context):
    """The softmax normalized otherwise, seen in attn_ctx alone: the reference's q, k, v attended with the
    softmax taken over the queries, or with a sink (exp(-max) of a zero score) added to its denominator,
    reproduces the candidate's attn_ctx."""
    for name, kind, attention, reference, candidate in attention_focus(context):
        if kind != "attn_ctx" or name.replace("attn_ctx", "attn_probs") in context.candidate:
            continue
        for normalize, what in ((_over_queries, "the softmax taken over the queries (dim=-2) instead of the keys"),
                                (_with_sink, "a term exp(-max) added to the softmax's denominator (a sink, or "
                                             "exp() divided by a sum that counts one more key)")):
            residual = explains(context, name, candidate, attention.output(kind, normalize=normalize), reference)
            if residual is not None:
                yield Diagnosis("softmax_normalization", name,
                                f"attention recomputed from the reference's q, k and v with {what} reproduces the "
                                f"candidate's {name} (rel error {residual:.2g}; its probabilities are not recorded)")
                return


def _over_queries(scores: np.ndarray) -> np.ndarray:
    """(H, T, S) masked scores -> each key's column normalized over the queries that see it."""
    weights = np.exp(scores - scores.max(-2, keepdims=True))
    return weights / weights.sum(-2, keepdims=True)


def _with_sink(scores: np.ndarray) -> np.ndarray:
    top = scores.max(-1, keepdims=True)
    weights = np.exp(scores - top)
    return weights / (weights.sum(-1, keepdims=True) + np.exp(-top))


def _reference_window(attention: "_Attention", tokens: int) -> int | None:
    """The reference's band as a window (tokens: none), when its mask is a causal band; else None."""
    if attention.visible is None:
        return tokens
    for width in range(1, tokens + 1):
        if np.array_equal(attention.visible, _band(0, width, tokens)):
            return width
    return None


def _band(ahead: int, width: int, tokens: int) -> np.ndarray:
    from parity.diagnose.bands import Band

    return Band(ahead, width, tokens, tokens).visible()


def _other_bands(window: int, tokens: int) -> list[tuple[int, int]]:
    """(keys seen past the query's own position, window) of each band a port gets instead of (0, window)."""
    aheads = sorted({1, 2, 3, tokens - 1})
    widths = sorted({width for width in (window - 2, window - 1, window + 1, window + 2, tokens) if 0 < width <= tokens}
                    | (set(range(1, min(tokens, 17))) if window >= tokens else set()))
    bands = [(ahead, window) for ahead in aheads] + [(0, width) for width in widths if width != window]
    bands += [(window - 1, window)] if window < tokens else []     # the window on both sides, no causal mask
    return [band for band in dict.fromkeys(bands) if band != (0, window)]


def _band_words(band, tokens: int) -> str:
    if band.ahead >= tokens - 1 and band.window >= tokens:
        return "no mask at all (every query sees every key)"
    past = "" if band.ahead == 0 else f"{band.ahead} key(s) past each query's own position visible, "
    window = "no window" if band.window >= tokens else f"a window of {band.window} keys"
    return f"{past}{window}" if past else (window if band.window < tokens else "a causal mask and no window")


def _mask_advice(band, window: int, tokens: int) -> str:
    if band.ahead >= tokens - 1 and band.window >= tokens:
        return ": every position attends to the future; the mask is missing (is_causal=False, or no mask passed)"
    if band.ahead > 0:
        return (": the causal mask lets each query see keys after it (triu(ones, diagonal) with another diagonal, "
                "or a window taken on both sides)")
    if band.window >= tokens:
        return ": the sliding window is not applied"
    if window >= tokens:
        return ": a sliding window applied where the model has none"
    return f": the window is {band.window - window:+d} key(s) off (key s visible from query t when t - window < s <= t)"


@register("probabilities_absent")
def probabilities_absent(context: Context):
    """A note, not a cause: the reference records attention probabilities and the candidate none. Only the
    probabilities missing is what a fused kernel hides; more than that missing is said as it is."""
    from parity.core.names import parse

    absent = [name for name in context.comparison.missing if name.endswith(".attn_probs")]
    if not absent:
        return
    others = sorted({parse(name).kind for name in context.comparison.missing
                     if parse(name) is not None and not name.endswith(".attn_probs")})
    if others:
        yield (f"the candidate records no attention probabilities ({absent[0]} and {len(absent) - 1} more), and more "
               f"than a fused kernel hides is missing too ({', '.join(others[:8])}): those are not compared; "
               "map the candidate's tensors to those checkpoints where it computes them (docs/capture.md)")
        return
    if context.candidate.metadata.get("compiled") == "exported by torch.export":
        how = ("export the model with attention that computes its softmax (transformers' "
               "attn_implementation=\"eager\"): parity reads the probabilities off the graph's softmax")
    elif str(context.candidate.metadata.get("producer", "")).startswith("torch:"):
        how = ("run the manual attention path and wrap the softmax's output in a Probe (`att = "
               "self.probs(F.softmax(att, dim=-1))`) mapped to layers.{i}.attn_probs; see docs/capture.md")
    else:   # a trace another program wrote
        how = ("compute the softmax of the scores, (H, T, S) per layer, and write it as layers.{i}.attn_probs; "
               "see docs/trace-format.md")
    yield (f"the candidate records no attention probabilities ({absent[0]} and {len(absent) - 1} more are "
           "missing): a fused kernel (scaled_dot_product_attention, flash attention) never materializes them. "
           f"To compare them, {how}")
