"""Tokenizer parity: the candidate's token ids for a text against the reference's, aligned.

The ids are aligned with a longest-matching-blocks diff; each difference is a
run of reference tokens replaced by a run of candidate tokens, shown with the
text of each token. Known patterns are named from the ids and their text:
  extra_bos / missing_bos            one more or one fewer BOS at the start
  extra_eos / missing_eos            one more or one fewer EOS at the end
  missing_space_prefix / extra_space_prefix
                                     a token that is only a space prefix ('▁', ' ')
                                     present on one side and not the other
  special_token_split                a special token of the reference written as
                                     several ordinary tokens by the candidate
  different_segmentation             the same text cut into other tokens
  different_text                     the runs decode to different text
"""

from __future__ import annotations

import difflib
from collections.abc import Callable
from dataclasses import dataclass

from parity.core.results import TextTokens, TokenDifference


@dataclass(frozen=True)
class Vocabulary:
    """What the pattern names need to know of a tokenizer."""

    piece: Callable[[int], str]   # the text of one token
    bos: int | None = None
    eos: int | None = None
    special: frozenset[int] = frozenset()
    size: int | None = None        # ids run from 0 to size - 1, where known

    def __repr__(self) -> str:
        return f"<Vocabulary bos={self.bos} eos={self.eos} {len(self.special)} special>"


def compare_ids(name: str, text: str, reference_ids, candidate_ids, reference: Vocabulary, candidate: Vocabulary) -> TextTokens:
    reference_ids, candidate_ids = tuple(reference_ids), tuple(candidate_ids)
    differences = []
    matcher = difflib.SequenceMatcher(a=reference_ids, b=candidate_ids, autojunk=False)
    for tag, r0, r1, c0, c1 in matcher.get_opcodes():
        if tag == "equal":
            continue
        reference_run = tuple((i, reference.piece(i)) for i in reference_ids[r0:r1])
        candidate_run = tuple((i, candidate.piece(i)) for i in candidate_ids[c0:c1])
        pattern = _pattern(reference_run, candidate_run, r0, r1, len(reference_ids), reference, candidate)
        differences.append(TokenDifference(r0, reference_run, c0, candidate_run, pattern))
    return TextTokens(name, text, reference_ids, candidate_ids, tuple(differences))


def _pattern(reference_run, candidate_run, start, end, length, reference: Vocabulary, candidate: Vocabulary) -> str:
    reference_ids = [i for i, _ in reference_run]
    candidate_ids = [i for i, _ in candidate_run]
    if not reference_ids and candidate.bos is not None and set(candidate_ids) == {candidate.bos} and start == 0:
        return "extra_bos"
    if not candidate_ids and reference.bos is not None and set(reference_ids) == {reference.bos} and start == 0:
        return "missing_bos"
    if not reference_ids and candidate.eos is not None and set(candidate_ids) == {candidate.eos} and start == length:
        return "extra_eos"
    if not candidate_ids and reference.eos is not None and set(reference_ids) == {reference.eos} and end == length:
        return "missing_eos"
    if not candidate_ids and all(_is_space_prefix(text) for _, text in reference_run):
        return "missing_space_prefix"
    if not reference_ids and all(_is_space_prefix(text) for _, text in candidate_run):
        return "extra_space_prefix"
    reference_text = "".join(text for _, text in reference_run)
    candidate_text = "".join(text for _, text in candidate_run)
    if any(i in reference.special for i in reference_ids) and len(candidate_ids) > len(reference_ids) \
            and reference_text == candidate_text:
        return "special_token_split"
    if reference_text == candidate_text:
        return "different_segmentation"
    return "different_text"


def _is_space_prefix(text: str) -> bool:
    return text in (" ", "▁", "")


def describe(pattern: str) -> str:
    return {
        "extra_bos": "the candidate adds a BOS token the reference does not (a doubled BOS?)",
        "missing_bos": "the candidate leaves out the BOS token the reference starts with",
        "extra_eos": "the candidate appends an EOS token",
        "missing_eos": "the candidate leaves out the EOS token",
        "missing_space_prefix": "the candidate drops a token that is only a space prefix (SentencePiece '▁')",
        "extra_space_prefix": "the candidate adds a token that is only a space prefix (SentencePiece '▁')",
        "special_token_split": "the candidate writes a special token as ordinary pieces: it does not parse special tokens in text",
        "different_segmentation": "the same text is cut into other tokens (other merges or vocabulary)",
        "different_text": "the tokens decode to different text (normalization, byte fallback, or another vocabulary)",
    }[pattern]
