"""Detectors for the input of the blocks: position_embedding (learned position rows shifted,
missing or doubled) and token_shift read from the traces' token ids and position counts."""

from __future__ import annotations

import numpy as np

from parity.core.metrics import rel_l2
from parity.core.results import Diagnosis
from parity.diagnose import register
from parity.diagnose.context import Context, matches, widened

MAX_OFFSET = 3
EXACT = 1e-2  # rows of one table read in another dtype agree to its rounding


@register("position_embedding")
def position_embedding(context: Context):
    """Learned position embeddings read at t + k, left out, or added twice; from the position rows
    themselves (pos_embed) or from the sum (embed) less the reference's position rows."""
    for name, checkpoint, reference, candidate in context.focused("pos_embed", "embed"):
        if checkpoint.kind == "pos_embed":
            found = _shifted_rows(reference, candidate)
            what = found and f"the candidate's position rows are the reference's rows t{found[0]:+d}"
        elif "pos_embed" in context.reference:
            found = _embed_hypotheses(reference, widened(context.reference["pos_embed"]), candidate)
            what = found and found[1]
        else:
            continue
        if found:
            yield Diagnosis("position_embedding", name,
                            f"{what} (rel error {found[-1]:.2g}): the learned position embeddings are "
                            f"{_described(found)}; positions should run 0..T-1, added once to the token embeddings")
            return


def _described(found) -> str:
    if isinstance(found[0], int):
        return f"read at position t{found[0]:+d}"
    return {"missing": "left out", "doubled": "added twice"}[found[0]]


def _shifted_rows(reference: np.ndarray, candidate: np.ndarray):
    """(k, residual) when candidate row t holds reference row t + k wherever both exist."""
    for shift in sorted(range(-MAX_OFFSET, MAX_OFFSET + 1), key=abs):
        rows = _overlap(reference.shape[0], shift)
        if shift == 0 or rows is None:
            continue
        (ref_start, cand_start), count = rows
        residual = rel_l2(reference[ref_start:ref_start + count], candidate[cand_start:cand_start + count])
        if residual < EXACT and rel_l2(reference, candidate) > 10 * residual:
            return shift, residual
    return None


def _overlap(length: int, shift: int):
    """((reference start, candidate start), count) for candidate[t] = reference[t + shift]; None if under 2 rows."""
    count = length - abs(shift)
    return ((max(0, shift), max(0, -shift)), count) if count >= 2 else None


def _embed_hypotheses(reference: np.ndarray, positions: np.ndarray, candidate: np.ndarray):
    """('missing' | 'doubled' | k, description, residual) when the embedding's position part explains the candidate."""
    if positions.shape != reference.shape:
        return None
    tokens = reference - positions
    for label, hypothesis in (("missing", tokens), ("doubled", tokens + 2 * positions)):
        residual = matches(candidate, hypothesis, reference)
        if residual is not None:
            return label, f"the candidate's embedding is the reference's token embeddings {'alone' if label == 'missing' else 'plus twice its position rows'}", residual
    for shift in sorted(range(-MAX_OFFSET, MAX_OFFSET + 1), key=abs):
        rows = _overlap(reference.shape[0], shift)
        if shift == 0 or rows is None:
            continue
        (position_start, token_start), count = rows   # candidate[t] = tokens[t] + positions[t + shift]
        part = slice(token_start, token_start + count)
        hypothesis = tokens[part] + positions[position_start:position_start + count]
        residual = matches(candidate[part], hypothesis, reference[part])
        if residual is not None:
            return shift, f"the candidate's embedding at t is the reference's token embedding plus position row t{shift:+d}", residual
    return None


def token_shift_from_tokens(context: Context):
    """token_shift from the traces' token ids, or from a position table run over more positions."""
    reference_tokens, candidate_tokens = context.reference.tokens, context.candidate.tokens
    if reference_tokens is not None and candidate_tokens is not None and list(reference_tokens) != list(candidate_tokens):
        where = context.focus[0] if context.focus else "embed"
        yield Diagnosis("token_shift", where, f"the traces were made from different token ids: "
                                              f"{_token_difference(list(reference_tokens), list(candidate_tokens))}")
        return
    if "pos_embed" in context.focus and "pos_embed" in context.candidate:
        reference, candidate = (trace["pos_embed"].astype(np.float64) for trace in (context.reference, context.candidate))
        extra = candidate.shape[0] - reference.shape[0]
        if reference.ndim == candidate.ndim == 2 and extra != 0 and reference.shape[1] == candidate.shape[1]:
            shared = min(reference.shape[0], candidate.shape[0])
            if rel_l2(reference[:shared], candidate[:shared]) < EXACT:
                what = f"{extra} more" if extra > 0 else f"{-extra} fewer"
                yield Diagnosis("token_shift", "pos_embed",
                                f"the candidate runs over {candidate.shape[0]} positions where the reference runs over "
                                f"{reference.shape[0]} (its first {shared} position rows agree): it was given {what} "
                                "token(s) than the trace's ids; a BOS added inside the model, or a missing one")


def _token_difference(reference: list[int], candidate: list[int]) -> str:
    for shift in range(1, MAX_OFFSET + 1):
        if candidate[shift:] == reference:
            return f"the candidate's ids are the reference's with {candidate[:shift]} prepended (an extra BOS?)"
        if reference[shift:] == candidate:
            return f"the candidate's ids lack the reference's first {reference[:shift]} (a missing BOS?)"
        if len(candidate) == len(reference) and candidate[shift:] == reference[:-shift]:
            return (f"the candidate's ids are the reference's with {candidate[:shift]} prepended and as many "
                    "dropped at the end (an extra BOS, cut to the same length?)")
        if len(candidate) == len(reference) and reference[shift:] == candidate[:-shift]:
            return f"the candidate's ids are the reference's shifted left by {shift} (a missing BOS?)"
    first = next((i for i, (r, c) in enumerate(zip(reference, candidate)) if r != c), min(len(reference), len(candidate)))
    return (f"reference {len(reference)} tokens, candidate {len(candidate)}; first difference at position {first} "
            f"(reference {reference[first:first + 3]}, candidate {candidate[first:first + 3]})")
