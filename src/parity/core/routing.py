"""The experts an MoE router chose, compared as agreement rather than by rel_l2.

`layers.{i}.moe_experts` holds integer ids, (T, k), ascending per token. A token
agrees when both sides chose the same set. A token that disagrees is admitted
only as a near-tie: the reference's k-th and (k+1)-th router logits are closer
than twice the largest difference between the two sides' logits at that token,
and that difference is itself small (under the candidate's precision's TIE_SHIFT
of the logits' RMS: the noise of a low precision, not a wrong router); or where
the reference itself, run at the candidate's precision (the calibration), chose
what the candidate chose at that token (a router whose choice is made from more
than its recorded logits: ZAYA's). Anything else is a routing bug: experts
picked from the wrong axis, a wrong top-k, a router fed the wrong input.
"""

from __future__ import annotations

import numpy as np

from parity.core.results import FAIL, PASS, CheckpointResult, Metrics, NoiseFloor, Tolerance
from parity.core.trace import Trace

# How far the two sides' router logits may part, as a share of their RMS, for a flip to be a near tie: a
# wrong router moves them by O(1). bfloat16 rounds one value by up to 0.4%, and the router's input carries
# every layer's rounding before it: a correct bfloat16 ERNIE-4.5-MoE moved them by 1.1% at a flipped token.
TIE_SHIFT = {"bfloat16": 0.05, "float16": 0.02}
TIE_SHIFT_DEFAULT = 0.01
AGREEMENT = Tolerance(atol=0.0, rtol=0.0, basis="experts chosen: the same set at every token, near-ties admitted")


def compare_experts(name: str, reference: Trace, candidate: Trace, noise: NoiseFloor | None = None) -> CheckpointResult:
    """`noise`: the calibration's floor at `name`, with the experts the low-precision reference run chose."""
    chosen_reference = np.asarray(reference[name]).astype(np.int64)
    chosen_candidate = np.asarray(candidate[name]).astype(np.int64)
    shapes = {"shape_reference": tuple(chosen_reference.shape), "shape_candidate": tuple(chosen_candidate.shape)}
    if chosen_reference.shape != chosen_candidate.shape:
        reason = (f"shape mismatch: reference chose {list(chosen_reference.shape)} experts, "
                  f"candidate {list(chosen_candidate.shape)} (another top-k?)")
        return CheckpointResult(name, FAIL, tolerance=AGREEMENT, reason=reason, **shapes)
    chosen_reference, chosen_candidate = _rows(chosen_reference), _rows(chosen_candidate)   # (T, k)
    differ, ties = _flips(name, reference, candidate, chosen_reference, chosen_candidate, noise)
    unexplained = differ & ~ties
    positions = np.flatnonzero(unexplained)
    tokens = len(differ)
    metrics = Metrics(
        numel=tokens, max_abs=float(max((len(set(r) - set(c)) for r, c in zip(chosen_reference, chosen_candidate)),
                                        default=0)),
        mean_abs=float(differ.mean()) if tokens else 0.0,
        rel_l2=float(differ.mean()) if tokens else 0.0,   # the fraction of tokens routed differently
        cosine=1.0 - (float(differ.mean()) if tokens else 0.0),
        max_rel=float(differ.any()), mismatched=int(unexplained.sum()),
        nan_reference=0, nan_candidate=0, inf_reference=0, inf_candidate=0,
        worst_index=(int(positions[0]), 0) if len(positions) else None,
        worst_position=int(positions[0]) if len(positions) else None,
        position_rel_l2=float(unexplained.any()), reference_rms=0.0,
    )
    if not len(positions):
        note = (f"{int(differ.sum())} near-tie flip(s) admitted (within the precision's noise, or routed as the "
                "reference routes at that precision)") if differ.any() else None
        return CheckpointResult(name, PASS, metrics=metrics, tolerance=AGREEMENT, reason=note, **shapes)
    first = int(positions[0])
    reason = (f"{len(positions)}/{tokens} tokens routed to other experts (first at position {first}: "
              f"reference {chosen_reference[first].tolist()}, candidate {chosen_candidate[first].tolist()})")
    return CheckpointResult(name, FAIL, metrics=metrics, tolerance=AGREEMENT, reason=reason, **shapes)


def admitted_flips(name: str, reference: Trace, candidate: Trace,
                   noise: NoiseFloor | None = None) -> dict[int, tuple[int, ...]]:
    """The tokens `name` routed otherwise in the candidate, each admitted as a near tie (or as the reference
    routes at the candidate's precision): {token: the experts the candidate chose, ascending}. Empty where no
    token was routed otherwise, where the two chose different numbers of experts, or where any flip is not
    admitted (a routing bug is not followed: commands/check/routing.py)."""
    chosen_reference = np.asarray(reference[name]).astype(np.int64)
    chosen_candidate = np.asarray(candidate[name]).astype(np.int64)
    if chosen_reference.shape != chosen_candidate.shape:
        return {}
    chosen_reference, chosen_candidate = _rows(chosen_reference), _rows(chosen_candidate)   # (T, k)
    differ, ties = _flips(name, reference, candidate, chosen_reference, chosen_candidate, noise)
    if (differ & ~ties).any():
        return {}
    return {int(token): tuple(sorted(chosen_candidate[token].tolist())) for token in np.flatnonzero(differ)}


def _rows(chosen: np.ndarray) -> np.ndarray:
    return chosen.reshape(-1, chosen.shape[-1])


def _flips(name: str, reference: Trace, candidate: Trace, chosen_reference: np.ndarray,
           chosen_candidate: np.ndarray, noise: NoiseFloor | None) -> tuple[np.ndarray, np.ndarray]:
    """(differ, admitted), each (T,): the tokens whose experts differ, and those that may (a near tie)."""
    differ = np.array([set(r) != set(c) for r, c in zip(chosen_reference, chosen_candidate)], dtype=bool)
    ties = _near_ties(name, reference, candidate, chosen_reference.shape[-1], len(differ))
    if noise is not None and noise.chosen is not None and len(noise.chosen) == len(differ):
        ties |= np.array([tuple(sorted(c)) == low for c, low in zip(chosen_candidate.tolist(), noise.chosen)])
    return differ, ties


def _near_ties(name: str, reference: Trace, candidate: Trace, top_k: int, tokens: int) -> np.ndarray:
    logits_name = name.rsplit(".", 1)[0] + ".moe_router_logits"
    if logits_name not in reference or logits_name not in candidate:
        return np.zeros(tokens, dtype=bool)
    logits_reference = np.asarray(reference[logits_name], dtype=np.float64).reshape(tokens, -1)
    logits_candidate = np.asarray(candidate[logits_name], dtype=np.float64)
    if logits_candidate.size != logits_reference.size or top_k >= logits_reference.shape[-1]:
        return np.zeros(tokens, dtype=bool)
    logits_candidate = logits_candidate.reshape(tokens, -1)
    ordered = -np.sort(-logits_reference, axis=-1)
    gap = ordered[:, top_k - 1] - ordered[:, top_k]                          # (T,)
    shift = np.abs(logits_candidate - logits_reference).max(axis=-1)          # (T,)
    scale = float(np.sqrt(np.mean(logits_reference ** 2)))
    allowed = TIE_SHIFT.get(candidate.metadata.get("dtype") or "", TIE_SHIFT_DEFAULT)
    return (gap <= 2.0 * shift) & (shift <= allowed * scale)
