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

from parity.core.errors import CaptureError
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
    follows: str = ""                # the prompt the text follows, not echoed (row 0 then predicts token 0):
                                     # a chat answer's, as the reference's chat template renders it
    follows_template: bool = True    # False: `follows` is a completion's prompt as sent, to which the
                                     # tokenizer adds its own special tokens

    def __repr__(self) -> str:
        return f"<CandidateTokens {len(self.pieces)} tokens, {len(self.pieces) - self.first_generated} generated>"


def compare_sequences(reference: ReferenceTokens, candidate: CandidateTokens, *,
                      strict: frozenset[str] = frozenset(), sent: Mapping[str, object] | None = None
                      ) -> SequenceComparison:
    """The candidate's tokens and log-probabilities against the reference's. A candidate whose rows are one
    token off (llama-cpp-python's echo) is read shifted, with a note, unless `strict` holds logprob_shift;
    a generated token that is not the candidate's own top-1 names its sampler. `sent`: the request's
    extra fields (--server-option), named in the sampler's finding."""
    pieces_to_ids = _pieces_to_ids(reference.vocab_pieces)
    alignment = align_offsets(reference, candidate)                 # candidate index -> reference index
    diagnoses, notes = [], []
    shift = detect_shift(reference, candidate, alignment)
    if shift is not None and "logprob_shift" not in strict:
        candidate = _read_shifted(candidate, shift)
        notes.append(f"adapted (logprob_shift): {shift.message}; read shifted back; "
                     "--strict logprob_shift holds it as a failure")
    elif shift is not None:
        diagnoses.append(Diagnosis("token_shift", "logprobs", shift.message))
    positions = []
    for index in range(0 if candidate.follows else 1, len(candidate.pieces)):
        reference_index = alignment.get(index)
        if reference_index is None or reference_index == 0:
            continue
        row = reference.logprobs[reference_index - 1]
        positions.append(_position(index, row, candidate.top_logprobs[index], candidate, reference, pieces_to_ids))
    if not positions:
        raise _not_comparable(reference, candidate)
    first = next((p for p in positions if not p.agrees and not p.near_tie), None)
    held_shift = shift is not None and "logprob_shift" in strict   # rows misread: no reading of the sampler
    sampler = None if held_shift else detect_sampler(positions, sent or {})
    if sampler is not None:
        diagnoses.append(sampler)
    if candidate.follows and candidate.follows_template:
        notes.append(f"a chat answer: its {len(candidate.pieces)} generated tokens are compared after the prompt as "
                     "the reference's chat template renders it (a chat endpoint does not echo the prompt)")
    elif candidate.follows:
        notes.append(f"the server did not echo the prompt: its {len(candidate.pieces)} generated tokens are compared "
                     "after the prompt as the reference tokenizes it")
    elif candidate.first_generated == 0 or all(row is None for row in candidate.top_logprobs[1:candidate.first_generated]):
        notes.append("the candidate returned no log-probabilities for the prompt (no echo support?)")
    covered = sum(len(piece) for piece in candidate.pieces)
    if covered < len(candidate.text):
        notes.append(f"the candidate's log-probabilities cover {covered} of the {len(candidate.text)} characters "
                     f"of its text; {candidate.text[covered:]!r} at the end has none")
    unaligned = len(candidate.pieces) - (0 if candidate.follows else 1) - len(positions)
    if unaligned:
        notes.append(f"{unaligned} candidate tokens have no reference token at the same offset (tokenizations differ there)")
    return SequenceComparison(tuple(positions), unaligned, first, tuple(diagnoses), tuple(notes), candidate.text)


def _not_comparable(reference: ReferenceTokens, candidate: CandidateTokens) -> CaptureError:
    """A comparison of no position is never a pass: say which tokens each side has."""
    def first(pieces) -> str:
        return ", ".join(repr(piece) for piece in pieces[:4])[:80] + (", ..." if len(pieces) > 4 else "")

    return CaptureError(
        f"the candidate's answer cannot be compared (not comparable): none of its {len(candidate.pieces) - 1} tokens "
        f"after the first starts where a reference token with the same text starts (candidate {first(candidate.pieces)}; "
        f"reference {first(reference.pieces)}); check that the candidate runs the reference's model and tokenizer")


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


@dataclass(frozen=True)
class Shift:
    """The candidate's row k holds the distribution of token k + rows."""

    rows: int
    message: str


def _read_shifted(candidate: CandidateTokens, shift: Shift) -> CandidateTokens:
    """The candidate with row k moved to token k + shift.rows (a row with nothing to move in is None)."""
    import dataclasses

    count = len(candidate.top_logprobs)
    moved = tuple(candidate.top_logprobs[k - shift.rows] if 0 <= k - shift.rows < count else None
                  for k in range(count))
    return dataclasses.replace(candidate, top_logprobs=moved)


# What makes a server pick a token that is not its own top-1 at temperature 0 (llama.cpp's and
# llama-cpp-python's defaults first): the fields a request can set to make it greedy.
SAMPLER_FIELDS = {"repeat_penalty": 1.0, "presence_penalty": 0.0, "frequency_penalty": 0.0, "top_k": 1}


def detect_sampler(positions: list[PositionResult], sent: Mapping[str, object]) -> Diagnosis | None:
    """sampler_not_greedy: generated tokens that are not the candidate's own top-1 (its reported
    log-probabilities are the model's, before the sampler's penalties)."""
    chosen = [p for p in positions if p.generated and p.candidate_top1 is not None and p.piece != p.candidate_top1]
    if not chosen:
        return None
    first = chosen[0]
    model_agrees = sum(p.candidate_top1 == p.reference_top[0][0] for p in chosen)
    unset = [f"{field}={value}" for field, value in SAMPLER_FIELDS.items() if field not in sent]
    settings = ", ".join(f"{key}={value}" for key, value in sent.items()) or "none beyond temperature 0"
    fix = (f"pass --server-option {' --server-option '.join(unset[:2])} (the server's request fields; sent: "
           f"{settings})" if unset else f"its sampler ignores the settings sent ({settings}); check its own flags")
    return Diagnosis(
        "sampler_not_greedy", f"token {first.index}",
        f"the server returned {first.piece!r} at token {first.index} where its own top-1 was {first.candidate_top1!r} "
        f"({len(chosen)} of {sum(p.generated for p in positions)} generated tokens were not its top-1): its "
        f"sampler is not greedy though temperature 0 was asked, e.g. llama.cpp's default repeat_penalty 1.1, a "
        f"presence or frequency penalty; at those tokens its model's top-1 is the reference's at {model_agrees}/"
        f"{len(chosen)}; {fix}")


def detect_shift(reference, candidate, alignment) -> Shift | None:
    """The candidate's rows match the reference's predictions one token off."""
    as_specified = _row_agreement(reference, candidate, alignment, 0)
    if as_specified[1] == 0 or as_specified[0] / as_specified[1] >= SHIFT_AGREEMENT:
        return None
    for shift in (1, -1):
        agree, total = _row_agreement(reference, candidate, alignment, shift)
        if total and agree / total >= SHIFT_AGREEMENT:
            direction = "after" if shift > 0 else "before"
            return Shift(
                shift,
                f"the candidate's log-probabilities for token k are the reference's prediction for token k{shift:+d} "
                f"(top-1 agrees at {agree}/{total} rows read shifted, {as_specified[0]}/{as_specified[1]} as specified): "
                f"each token is scored with the distribution {direction} it instead of the one that predicts it",
            )
    return None
