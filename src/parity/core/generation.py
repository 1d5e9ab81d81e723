"""Generation parity: greedy decoding, teacher-forced agreement, and samplers.

- Greedy: both sides decode N tokens; the first step where they pick different
  tokens is reported with the reference's top-k and the margin between its top
  two. A flip where that margin is under NEAR_TIE_NATS is a near tie that noise
  can flip, told apart from a real divergence.
- Teacher-forced: both sides score the reference's continuation in one pass;
  per position, KL(reference || candidate) over the full vocabulary and whether
  the candidate's top-1 is the reference's top-1 (and within its top 5), the
  figures llama.cpp's perplexity --kl-divergence reports.
- Sampler: a candidate's sampler and the reference sampler applied to the same
  logits, per step: KL and total variation; when they differ, the temperature
  that would explain the candidate's distribution is fitted.
"""

from __future__ import annotations

import numpy as np

from parity.core.results import GreedyDivergence, SamplerCheck, TeacherForced
from parity.core.results.sequence import NEAR_TIE_NATS

TOP_K = 5
SAMPLER_TV = 1e-3   # samplers applied to the same logits agree to rounding


def log_softmax(logits: np.ndarray) -> np.ndarray:
    logits = np.asarray(logits, dtype=np.float64)
    shifted = logits - logits.max(-1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(-1, keepdims=True))


def greedy(logits_of, prompt: list[int], count: int) -> tuple[list[int], list[np.ndarray]]:
    """Greedy continuation of `prompt`; `logits_of(ids)` returns (T, V). Also each step's last-row log-probs."""
    tokens, rows = list(prompt), []
    for _ in range(count):
        row = log_softmax(logits_of(tokens)[-1])
        rows.append(row)
        tokens.append(int(np.argmax(row)))
    return tokens[len(prompt):], rows


def greedy_stepped(step, prompt: list[int], count: int) -> tuple[list[int], list[np.ndarray]]:
    """greedy() through a cache: `step(ids)` runs `ids` after everything it was given before and returns the last
    position's logits (V,). One token per step, so N tokens cost N one-token passes, not N passes over the whole
    sequence."""
    if count < 1:
        return [], []
    tokens, rows, row = [], [], step(list(prompt))
    for index in range(count):
        logprobs = log_softmax(row)
        rows.append(logprobs)
        tokens.append(int(np.argmax(logprobs)))
        if index + 1 < count:
            row = step([tokens[-1]])
    return tokens, rows


def first_divergence(reference_tokens, candidate_tokens, reference_rows) -> GreedyDivergence | None:
    for step, (reference_token, candidate_token) in enumerate(zip(reference_tokens, candidate_tokens)):
        if reference_token != candidate_token:
            row = reference_rows[step]
            order = np.argsort(row)[::-1]
            rank = int(np.nonzero(order == candidate_token)[0][0]) if candidate_token < row.size else None
            return GreedyDivergence(step, reference_token, candidate_token,
                                    tuple((int(i), float(np.exp(row[i]))) for i in order[:TOP_K]),
                                    float(row[order[0]] - row[order[1]]), rank)
    return None


# KL grows with the square of a logit error: 9x the noise's KL is the 3x the noise every other bound allows.
KL_FACTOR = 9.0
KL_FLOOR_NATS = 1e-9   # two float32 implementations of one model differ by about 1e-12 nats


def kl_bound(noise_kl: tuple[float, ...]) -> float:
    """The KL a candidate may have at any position: KL_FACTOR x the largest its precision makes, plus a floor."""
    finite = [kl for kl in noise_kl if np.isfinite(kl)]
    return KL_FACTOR * max(finite, default=0.0) + KL_FLOOR_NATS


def near_tie_margins(reference_logits: np.ndarray, noise_logits: np.ndarray, start: int) -> tuple[float, ...]:
    """Per predicted position start.. (as teacher_forced), the margin under which a top-1 flip is one the
    candidate's precision makes: MULTIPLE x how far a run of the reference at that precision (`noise_logits`,
    the same rows) moves the gap between the reference's top token and any of its top TOP_K, the largest within
    NEIGHBOURS positions, and never under NEAR_TIE_NATS. Quantized numerics flip tokens the reference prefers by
    several nats where the model is unsettled (llama.cpp's Q4_1 SmolLM2, 512 greedy steps: its own emulated run
    flips at margins of 2.8 and 4.7 nats), and by less than 0.1 nats elsewhere."""
    from parity.core.calibrate import MULTIPLE, neighbourhood_max

    rows = range(start - 1, len(reference_logits) - 1)
    moved = np.concatenate([_top_gaps_moved(reference_logits[block], noise_logits[block])
                            for block in _row_blocks(rows)]) if len(rows) else np.zeros(0)
    moved = np.where(np.isfinite(moved), moved, np.inf)
    return tuple(max(NEAR_TIE_NATS, MULTIPLE * float(value)) for value in neighbourhood_max(list(moved)))


def held_to_noise(forced: TeacherForced, reference_logits: np.ndarray, noise_logits: np.ndarray, start: int,
                  precision: str) -> TeacherForced:
    """Teacher-forced scores held to what a run of the reference at the candidate's `precision` makes over the same
    sequence (`noise_logits`): each position's near-tie margin (near_tie_margins) and KL bound (kl_bound)."""
    from dataclasses import replace

    noise_kl = teacher_forced(reference_logits, noise_logits, start).kl
    return replace(forced, near_tie_nats=near_tie_margins(reference_logits, noise_logits, start),
                   kl_bound=kl_bound(noise_kl), kl_basis=(f"{KL_FACTOR:g} x the largest KL {precision} makes "
                                                          f"({max(noise_kl, default=0.0):.3g} nats) + a floor"))


def divergence_held_to(divergence: GreedyDivergence | None, forced: TeacherForced,
                       precision: str) -> GreedyDivergence | None:
    """The greedy divergence with the near-tie margin `forced` holds at its step (its context is the reference's
    continuation up to there); unchanged where `forced` has no calibrated margins."""
    from dataclasses import replace

    from parity.core.calibrate import MULTIPLE

    if divergence is None or not forced.near_tie_nats:
        return divergence
    return replace(divergence, near_tie_nats=forced.near_tie_at(divergence.step), near_tie_basis=(
        f"{MULTIPLE:g}x how far {precision} moves the reference's top log-probability gaps there"))


def _row_blocks(rows: range, size: int = 64) -> list[slice]:
    """`rows` in blocks: a block's log-probabilities are a few (size, V) arrays, not (T, V)."""
    return [slice(begin, min(begin + size, rows.stop)) for begin in range(rows.start, rows.stop, size)]


def _top_gaps_moved(reference_rows: np.ndarray, noise_rows: np.ndarray) -> np.ndarray:
    """Per row, the largest change the noise run makes in the gap between the reference's top token and each of
    its top TOP_K (log-probabilities)."""
    reference, noise = log_softmax(reference_rows), log_softmax(noise_rows)
    top = np.argpartition(reference, -TOP_K, axis=-1)[:, -TOP_K:] if reference.shape[-1] > TOP_K else \
        np.argsort(reference, axis=-1)
    first = np.take_along_axis(top, np.argmax(np.take_along_axis(reference, top, axis=-1), axis=-1)[:, None], -1)
    reference_gaps = np.take_along_axis(reference, first, -1) - np.take_along_axis(reference, top, -1)
    noise_gaps = np.take_along_axis(noise, first, -1) - np.take_along_axis(noise, top, -1)
    return np.abs(noise_gaps - reference_gaps).max(axis=-1)


def teacher_forced(reference_logits: np.ndarray, candidate_logits: np.ndarray, start: int) -> TeacherForced:
    """Compare the rows that predict positions start.. (row t predicts token t + 1)."""
    reference = log_softmax(reference_logits[start - 1:-1])
    candidate = log_softmax(candidate_logits[start - 1:-1])
    kl = np.sum(np.exp(reference) * (reference - candidate), axis=-1)
    reference_order = np.argsort(reference, axis=-1)[:, ::-1]
    candidate_top1 = np.argmax(candidate, axis=-1)
    top1 = reference_order[:, 0] == candidate_top1
    top5 = np.array([c in row[:TOP_K] for c, row in zip(candidate_top1, reference_order)])
    margins = np.take_along_axis(reference, reference_order[:, :2], axis=-1)
    return TeacherForced(tuple(map(float, kl)), tuple(map(bool, top1)), tuple(map(bool, top5)),
                         tuple(float(a - b) for a, b in margins))


def reference_sampler(logits: np.ndarray, temperature: float, top_k: int | None, top_p: float | None) -> np.ndarray:
    """Probabilities of the standard sampler: temperature, then top-k, then top-p (nucleus), renormalized."""
    probabilities = np.exp(log_softmax(np.asarray(logits, np.float64) / temperature))
    order = np.argsort(probabilities)[::-1]
    keep = np.zeros_like(probabilities, dtype=bool)
    kept = order[:top_k] if top_k else order
    if top_p is not None and top_p < 1.0:
        cumulative = np.cumsum(probabilities[kept])
        kept = kept[: int(np.searchsorted(cumulative, top_p) + 1)]
    keep[kept] = True
    filtered = np.where(keep, probabilities, 0.0)
    return filtered / filtered.sum()


def check_sampler(sampler, rows: np.ndarray, temperature: float, top_k: int | None, top_p: float | None) -> SamplerCheck:
    """The candidate's `sampler(logits, temperature, top_k, top_p) -> probabilities` against the reference
    sampler, both on the same logits rows."""
    kls, tvs = [], []
    for logits in rows:
        expected = reference_sampler(logits, temperature, top_k, top_p)
        actual = np.asarray(sampler(np.array(logits), temperature, top_k, top_p), dtype=np.float64).reshape(-1)
        actual = actual / actual.sum()
        support = expected > 0
        with np.errstate(divide="ignore"):
            kls.append(float(np.sum(expected[support] * (np.log(expected[support]) - np.log(actual[support])))))
        tvs.append(float(0.5 * np.abs(expected - actual).sum()))
    first = next((step for step, tv in enumerate(tvs) if tv > SAMPLER_TV), None)
    fitted = _fit_temperature(sampler, rows[first], temperature, top_k, top_p) if first is not None else None
    return SamplerCheck(tuple(kls), tuple(tvs), first, fitted)


def _fit_temperature(sampler, logits, temperature, top_k, top_p) -> float | None:
    """The temperature at which the reference sampler reproduces the candidate's distribution, if one does."""
    actual = np.asarray(sampler(np.array(logits), temperature, top_k, top_p), dtype=np.float64).reshape(-1)
    actual = actual / actual.sum()
    candidates = np.exp(np.linspace(np.log(0.05), np.log(5.0), 400))
    errors = [0.5 * np.abs(reference_sampler(logits, t, top_k, top_p) - actual).sum() for t in candidates]
    best = int(np.argmin(errors))
    return float(candidates[best]) if errors[best] < 0.02 else None
