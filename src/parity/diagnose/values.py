"""Detectors that compare the candidate's tensor with transformed reference tensors:
token_shift, layout_permuted, swapped, sign_flip, scale_factor."""

from __future__ import annotations

import itertools

import numpy as np

from parity.core.metrics import rel_l2
from parity.core.names import parse
from parity.core.results import Diagnosis
from parity.diagnose import register
from parity.diagnose.context import (Context, explains, matches, matches_scaled, same_tensor, scaled_residual,
                                     widened)
from parity.diagnose.heads import head_layouts
from parity.diagnose.kv_heads import kv_heads_from_context
from parity.diagnose.repair import confirm

MAX_SHIFT = 3


@register("token_shift")
def token_shift(context: Context):
    """An extra or missing token: candidate position t + k holds the reference's position t."""
    from parity.diagnose.block_input import token_shift_from_tokens

    found = list(token_shift_from_tokens(context))  # the token ids differ, or the positions run longer
    if found:
        yield from found
        return
    for name in context.focus:
        checkpoint = parse(name)
        if checkpoint is None or name not in context.candidate or checkpoint.kind in ("attn_probs", "pos_embed"):
            continue
        reference_shape, candidate_shape = context.reference.shape_of(name), context.candidate.shape_of(name)
        if len(reference_shape) != 2 or len(candidate_shape) != 2 or reference_shape[1] != candidate_shape[1]:
            continue
        rows = min(reference_shape[0], candidate_shape[0]) + MAX_SHIFT + 1  # enough for every shift; lengths
        # the leading rows alone (a candidate declaring a huge tensor is never mapped whole); lengths
        # differing by more than MAX_SHIFT stay unequal
        reference, candidate = (widened(trace.head(name, rows)) for trace in (context.reference, context.candidate))
        for shift in sorted(range(-MAX_SHIFT, MAX_SHIFT + 1), key=abs):
            if shift == 0 or not _aligned_tail(reference, candidate, shift):
                continue
            extra = candidate.shape[0] - reference.shape[0]
            what = (f"{extra} extra token(s) at the start" if shift > 0 and extra == shift
                    else f"{-extra} token(s) missing at the start" if shift < 0 and extra == shift
                    else "the positions are offset")
            yield Diagnosis("token_shift", name,
                            f"candidate position t{shift:+d} holds the reference's position t "
                            f"(reference {reference_shape[0]} tokens, candidate {candidate_shape[0]}): {what}; "
                            "a doubled or missing BOS, or another tokenization")
            return


def _aligned_tail(reference: np.ndarray, candidate: np.ndarray, shift: int) -> bool:
    """Does candidate[t + shift] hold reference[t] wherever both exist (at least 2 positions)?

    Exactly, for a token embedding. When the lengths differ by exactly the shift
    (the candidate has that many tokens more or fewer), it is enough that the
    shifted rows point the same way while the unshifted ones do not: learned
    position embeddings (GPT-2) make an embedding shift-dependent."""
    shifted = _overlap_rows(reference, candidate, shift)
    if shifted is None:
        return False
    if rel_l2(*shifted) < 1e-2:
        return True
    unshifted = _overlap_rows(reference, candidate, 0)
    if candidate.shape[0] - reference.shape[0] != shift or unshifted is None:
        return False
    return _row_cosine(*shifted) >= SHIFTED_COSINE and _row_cosine(*shifted) - _row_cosine(*unshifted) >= COSINE_GAP


SHIFTED_COSINE, COSINE_GAP = 0.7, 0.3  # GPT-2 test model: 0.78 shifted, 0.29 unshifted


def _overlap_rows(reference: np.ndarray, candidate: np.ndarray, shift: int):
    start_reference, start_candidate = max(0, -shift), max(0, shift)
    count = min(reference.shape[0] - start_reference, candidate.shape[0] - start_candidate)
    if count < 2:
        return None
    return reference[start_reference:start_reference + count], candidate[start_candidate:start_candidate + count]


def _row_cosine(reference: np.ndarray, candidate: np.ndarray) -> float:
    """Mean cosine between matching rows."""
    norms = np.sqrt(_row_dots(reference, reference) * _row_dots(candidate, candidate))
    return float(np.mean(_row_dots(reference, candidate) / np.where(norms > 0, norms, 1.0)))


def _row_dots(left: np.ndarray, right: np.ndarray) -> np.ndarray:
    """Sum of products of each row pair, in float64, without a temporary of the rows' size."""
    return np.einsum("ij,ij->i", left, right, dtype=np.float64)


@register("layout_permuted")
def layout_permuted(context: Context):
    """Same values, axes in another order: aligned by the comparison, or of equal sizes and so not."""
    for result in context.comparison.checkpoints:
        if result.layout and result.status == "pass":
            yield Diagnosis("layout_permuted", result.name,
                            f"the candidate stores {result.name} as {list(result.shape_candidate)}; it matches the "
                            f"reference's {list(result.shape_reference)} with {result.layout} (compared after aligning)")
    found = list(head_layouts(context))   # heads reordered, or merged without the transpose
    found = found or list(kv_heads_from_context(context, "layout_permuted"))  # KV heads reordered inside attention
    if found:
        yield from found
        return
    for name, _, reference, candidate in context.focused():
        if reference.ndim < 2:
            continue
        for permutation in itertools.permutations(range(reference.ndim)):
            if permutation == tuple(range(reference.ndim)) or reference.transpose(permutation).shape != reference.shape:
                continue
            if matches(candidate, reference.transpose(permutation), reference) is not None:
                diagnosis = Diagnosis("layout_permuted", name,
                                      f"the candidate's {name} is the reference's with axes permuted {permutation} "
                                      f"(axes of equal size, so the layout cannot be told from the shape)")
                yield confirm(context, diagnosis, candidate.transpose(np.argsort(permutation)),
                              "permuting the candidate's axes back")
                return


@register("swapped")
def swapped(context: Context):
    """The candidate's tensor is another checkpoint of the reference (q and k swapped, say)."""
    for name, checkpoint, reference, candidate in context.focused():
        if checkpoint.layer is None:
            continue
        for other in context.reference.names:
            other_checkpoint = parse(other)
            if (other == name or other_checkpoint is None or other_checkpoint.layer != checkpoint.layer
                    or context.reference.shape_of(other) != candidate.shape):
                continue
            if matches(candidate, widened(context.reference[other]), reference) is not None \
                    and same_tensor(context, candidate, other, own=False) is not None:
                yield Diagnosis("swapped", name, f"the candidate's {name} holds the reference's {other}: "
                                                 f"{checkpoint.kind} and {other_checkpoint.kind} are swapped")
                return


@register("sign_flip")
def sign_flip(context: Context):
    for name, _, reference, candidate in context.focused():
        if matches_scaled(candidate, -1.0, reference) is not None:
            yield confirm(context, Diagnosis("sign_flip", name, f"the candidate's {name} is the reference's negated"),
                          -candidate, "negating the candidate")
            return


@register("scale_factor")
def scale_factor(context: Context):
    """candidate = c * reference for one constant c (not -1: that is sign_flip)."""
    for name, _, reference, candidate in context.focused():
        denominator = _dot(reference, reference)   # sums of products without a temporary of the tensor's size
        if denominator == 0 or not np.all(np.isfinite(candidate)):
            continue
        factor = _dot(candidate, reference) / denominator
        if abs(factor + 1) < 0.05 or abs(factor - 1) < 1e-3:
            continue
        measured = scaled_residual(candidate, factor, reference)   # (residual, error) rel_l2
        if measured is not None and (explains(*measured) or _scaled_within_noise(context, name, candidate, factor,
                                                                                  *measured)):
            diagnosis = Diagnosis("scale_factor", name, f"the candidate's {name} is the reference's times {factor:.4g}"
                                                        f"{_known_factor(factor, context)}")
            yield confirm(context, diagnosis, candidate / factor, f"dividing the candidate by {factor:.4g}")
            return


def _scaled_within_noise(context: Context, name: str, candidate: np.ndarray, factor: float, residual: float,
                         error: float) -> bool:
    """Where the precision's own noise is large (deep in a low-precision run), a wrong constant factor leaves that
    noise behind, more than EXPLAINED of the error: the factor still counts when it removes at least three quarters
    of the squared error (`residual` <= error / 2) and what it leaves is within the checkpoint's calibrated
    tolerance."""
    from parity.diagnose.repair import CONFIRMED, verdict

    result = context.comparison.result(name)
    tolerance = result.tolerance if result is not None else None
    if tolerance is None or not tolerance.calibrated or not tolerance.noise_rel_l2 or residual > 0.5 * error:
        return False
    return verdict(context, name, candidate / factor)[0] == CONFIRMED


def _dot(left: np.ndarray, right: np.ndarray) -> float:
    return float(np.dot(left.reshape(-1), right.reshape(-1)))


def _known_factor(factor: float, context: Context) -> str:
    from parity.diagnose.identities import scale_label

    label = scale_label(factor, context)
    if "head_dim" in label:
        return f"{label}: an attention scale applied twice or not at all?"
    if "hidden_size" in label:
        return f"{label}: an embedding scale (Gemma's sqrt(hidden_size)) applied where the model has none, or twice?"
    return label
