"""Token-level comparison: a candidate's per-position log-probabilities against the reference's.

Black-box candidates (an OpenAI-compatible server) expose no tensors, only, for
each token of a text, the log-probabilities of their top-k next tokens. The two
sides tokenize the same text, possibly differently, so positions are matched by
character offset and piece: a candidate token is comparable where the reference
has a token with the same text at the same offset.

Conventions (the OpenAI completions API): row k of the candidate is the
distribution that predicted token k; row j of the reference's log-probabilities
predicts token j + 1. A top-1 flip where the reference's best two tokens are
within NEAR_TIE_NATS (core/results/sequence.py) is a near tie that noise can flip, and is told apart from a
real divergence.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Mapping

import numpy as np

from parity.core.results import Diagnosis, PositionResult, SequenceComparison

TOP_K = 5
SHIFT_AGREEMENT = 0.8  # a shifted reading must explain this share of rows to be called a shift


@dataclass(frozen=True)
class ReferenceTokens:
    """The reference's tokens of a text and its next-token log-probabilities."""

    pieces: tuple[str, ...]          # text of each token
    offsets: tuple[int, ...]         # character offset where each token starts
    logprobs: np.ndarray             # (T, V) log-softmax; row j predicts token j + 1
    vocab_pieces: tuple[str, ...]    # token id -> its text

    def __repr__(self) -> str:
        return f"<ReferenceTokens {len(self.pieces)} tokens>"


@dataclass(frozen=True)
class CandidateTokens:
    """What a black-box candidate reported for a text (prompt echoed, then its continuation)."""

    text: str
    pieces: tuple[str, ...]
    offsets: tuple[int, ...]
    token_logprobs: tuple[float | None, ...]
    top_logprobs: tuple[Mapping[str, float] | None, ...]
    first_generated: int             # index of the first token the candidate generated

    def __repr__(self) -> str:
        return f"<CandidateTokens {len(self.pieces)} tokens, {len(self.pieces) - self.first_generated} generated>"


def compare_sequences(reference: ReferenceTokens, candidate: CandidateTokens) -> SequenceComparison:
    pieces_to_ids = _pieces_to_ids(reference.vocab_pieces)
    alignment = align_offsets(reference, candidate)                 # candidate index -> reference index
    positions = []
    for index in range(1, len(candidate.pieces)):
        reference_index = alignment.get(index)
        if reference_index is None or reference_index == 0:
            continue
        row = reference.logprobs[reference_index - 1]
        positions.append(_position(index, row, candidate.top_logprobs[index], candidate, reference, pieces_to_ids))
    first = next((p for p in positions if not p.agrees and not p.near_tie), None)
    diagnoses, notes = [], []
    shift = detect_shift(reference, candidate, alignment)
    if shift is not None:
        diagnoses.append(shift)
    if candidate.first_generated == 0 or all(row is None for row in candidate.top_logprobs[1:candidate.first_generated]):
        notes.append("the candidate returned no log-probabilities for the prompt (no echo support?)")
    covered = sum(len(piece) for piece in candidate.pieces)
    if covered < len(candidate.text):
        notes.append(f"the candidate's log-probabilities cover {covered} of the {len(candidate.text)} characters "
                     f"of its text; {candidate.text[covered:]!r} at the end has none")
    unaligned = len(candidate.pieces) - 1 - len(positions)
    if unaligned:
        notes.append(f"{unaligned} candidate tokens have no reference token at the same offset (tokenizations differ there)")
    return SequenceComparison(tuple(positions), unaligned, first, tuple(diagnoses), tuple(notes), candidate.text)


def align_offsets(reference: ReferenceTokens, candidate: CandidateTokens) -> dict[int, int]:
    """Candidate token index -> reference token index, where both start at the same offset with the same text."""
    by_offset = {}
    for index, (offset, piece) in enumerate(zip(reference.offsets, reference.pieces)):
        if piece:
            by_offset.setdefault(offset, (index, piece))
    alignment = {}
    for index, (offset, piece) in enumerate(zip(candidate.offsets, candidate.pieces)):
        match = by_offset.get(offset)
        if match is not None and match[1] == piece:
            alignment[index] = match[0]
    return alignment


def _position(index, row, candidate_row, candidate, reference, pieces_to_ids) -> PositionResult:
    top = np.argsort(row)[::-1][:TOP_K]
    reference_top = tuple((reference.vocab_pieces[i], float(math.exp(row[i]))) for i in top)
    piece = candidate.pieces[index]
    return PositionResult(
        index=index,
        offset=candidate.offsets[index],
        piece=piece,
        generated=index >= candidate.first_generated,
        reference_top=reference_top,
        candidate_top1=max(candidate_row, key=candidate_row.get) if candidate_row else None,
        reference_prob_of_piece=math.exp(_piece_logprob(row, piece, pieces_to_ids)),
        margin_nats=float(row[top[0]] - row[top[1]]) if len(top) > 1 else math.inf,
        kl_topk=_kl_topk(row, candidate_row, pieces_to_ids),
    )


def _pieces_to_ids(vocab_pieces: tuple[str, ...]) -> dict[str, list[int]]:
    table: dict[str, list[int]] = {}
    for token_id, piece in enumerate(vocab_pieces):
        table.setdefault(piece, []).append(token_id)
    return table


def _piece_logprob(row: np.ndarray, piece: str, pieces_to_ids: dict[str, list[int]]) -> float:
    ids = pieces_to_ids.get(piece)
    return float(np.logaddexp.reduce(row[ids])) if ids else -math.inf


def _kl_topk(row: np.ndarray, candidate_row: Mapping[str, float] | None, pieces_to_ids) -> float | None:
    """KL(reference || candidate) with both restricted to the candidate's top-k pieces and renormalized."""
    if not candidate_row:
        return None
    pieces = [piece for piece in candidate_row if piece in pieces_to_ids]
    if len(pieces) < 2:
        return None
    candidate_logp = np.array([candidate_row[piece] for piece in pieces])
    reference_logp = np.array([_piece_logprob(row, piece, pieces_to_ids) for piece in pieces])
    candidate_logp -= np.logaddexp.reduce(candidate_logp)
    reference_logp -= np.logaddexp.reduce(reference_logp)
    return float(np.sum(np.exp(reference_logp) * (reference_logp - candidate_logp)))


def _row_agreement(reference, candidate, alignment, shift: int) -> tuple[int, int]:
    """How many candidate rows k have the top-1 of the reference's prediction for token k + shift."""
    agree = total = 0
    for index, row in enumerate(candidate.top_logprobs):
        target = alignment.get(index + shift)
        if not row or target is None or target == 0:
            continue
        reference_top1 = reference.vocab_pieces[int(np.argmax(reference.logprobs[target - 1]))]
        agree += max(row, key=row.get) == reference_top1
        total += 1
    return agree, total


def detect_shift(reference, candidate, alignment) -> Diagnosis | None:
    """token_shift: the candidate's rows match the reference's predictions one token off."""
    as_specified = _row_agreement(reference, candidate, alignment, 0)
    if as_specified[1] == 0 or as_specified[0] / as_specified[1] >= SHIFT_AGREEMENT:
        return None
    for shift in (1, -1):
        agree, total = _row_agreement(reference, candidate, alignment, shift)
        if total and agree / total >= SHIFT_AGREEMENT:
            direction = "after" if shift > 0 else "before"
            return Diagnosis(
                "token_shift",
                "logprobs",
                f"the candidate's log-probabilities for token k are the reference's prediction for token k{shift:+d} "
                f"(top-1 agrees at {agree}/{total} rows read shifted, {as_specified[0]}/{as_specified[1]} as specified): "
                f"each token is scored with the distribution {direction} it instead of the one that predicts it",
            )
    return None
