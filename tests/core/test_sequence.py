import math

import numpy as np
import pytest

from parity.core.sequence import CandidateTokens, ReferenceTokens, align_offsets, compare_sequences

VOCAB = ("<s>", "A", " b", " c", " d", " e", "!")


def reference_over(pieces, predictions, margin=3.0):
    """Reference tokens whose row j puts most mass on predictions[j], `margin` nats above the rest."""
    offsets = np.cumsum([0] + [len(p) for p in pieces[:-1]]).tolist()
    logits = np.zeros((len(pieces), len(VOCAB)))
    for row, piece in enumerate(predictions):
        logits[row, VOCAB.index(piece)] = margin
    logprobs = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    return ReferenceTokens(tuple(pieces), tuple(offsets), logprobs, VOCAB)


def candidate_over(pieces, rows, first_generated):
    offsets = np.cumsum([0] + [len(p) for p in pieces[:-1]]).tolist()
    tops = tuple(None if row is None else {row: 0.0, " e": -3.0} for row in rows)  # as peaked as the reference
    return CandidateTokens("".join(pieces), tuple(pieces), tuple(offsets), (None,) * len(pieces), tops, first_generated)


PIECES = ["A", " b", " c", " d"]
PREDICTIONS = [" b", " c", " d", "!"]   # reference row j predicts token j + 1


def test_a_candidate_that_agrees_everywhere_passes():
    reference = reference_over(PIECES, PREDICTIONS)
    candidate = candidate_over(PIECES, [None, " b", " c", " d"], first_generated=3)
    comparison = compare_sequences(reference, candidate)
    assert comparison and comparison.agreeing == 3 and comparison.first_divergence is None
    assert [p.generated for p in comparison.positions] == [False, False, True]
    assert comparison.positions[0].kl_topk < 1e-9
    assert not comparison.diagnoses


def test_a_generated_token_the_reference_would_not_pick_is_the_first_divergence():
    reference = reference_over(PIECES, [" b", " c", " e", "!"])
    candidate = candidate_over(PIECES, [None, " b", " c", " d"], first_generated=3)
    comparison = compare_sequences(reference, candidate)
    assert not comparison
    first = comparison.first_divergence
    assert (first.index, first.piece, first.generated) == (3, " d", True)
    assert first.reference_top[0][0] == " e" and not first.near_tie


def test_a_flip_at_a_near_tie_is_not_a_divergence():
    reference = reference_over(PIECES, [" b", " c", " e", "!"], margin=0.2)
    candidate = candidate_over(PIECES, [None, " b", " c", " d"], first_generated=3)
    comparison = compare_sequences(reference, candidate)
    assert comparison and not comparison.positions[-1].agrees and comparison.positions[-1].near_tie


def test_rows_reported_one_token_late_are_read_shifted_with_a_note_and_held_under_strict():
    pieces = ["A", " b", " c", " d", " e"]
    reference = reference_over(pieces, [" b", " c", " d", " e", "!"])
    shifted = [None, " c", " d", " e", "!"]   # row k holds the prediction that follows token k
    adapted = compare_sequences(reference, candidate_over(pieces, shifted, first_generated=5))
    assert adapted and not adapted.diagnoses and adapted.agreeing == len(adapted.positions) == 4
    assert adapted.notes[0].startswith("adapted (logprob_shift)") and "token k+1" in adapted.notes[0]
    held = compare_sequences(reference, candidate_over(pieces, shifted, first_generated=5),
                             strict=frozenset({"logprob_shift"}))
    assert not held
    assert [d.cause for d in held.diagnoses] == ["token_shift"]
    assert "prediction for token k+1" in held.diagnoses[0].message


def test_a_generated_token_that_is_not_the_servers_own_top1_names_its_sampler():
    # token 3 ' d' was returned though the server's own row put ' e' first, as the reference does
    reference = reference_over(PIECES, [" b", " c", " e", "!"])
    candidate = candidate_over(PIECES, [None, " b", " c", " e"], first_generated=3)
    comparison = compare_sequences(reference, candidate)
    assert not comparison and comparison.first_divergence.index == 3
    [sampler] = comparison.diagnoses
    assert sampler.cause == "sampler_not_greedy" and sampler.checkpoint == "token 3"
    assert "its own top-1 was ' e'" in sampler.message and "reference's at 1/1" in sampler.message
    assert "--server-option repeat_penalty=1.0" in sampler.message
    sent = compare_sequences(reference, candidate, sent={"repeat_penalty": 1.0})
    assert "sent: repeat_penalty=1.0" in sent.diagnoses[0].message


def test_one_headline_counts_the_prompt_and_the_continuation_apart():
    reference = reference_over(PIECES, [" b", " c", " e", "!"])
    comparison = compare_sequences(reference, candidate_over(PIECES, [None, " b", " c", " d"], first_generated=3))
    assert comparison.headline.startswith("prompt: top-1 agrees at 2/2 positions; greedy continuation: 0/1 tokens")


def test_alignment_is_by_offset_and_text():
    reference = reference_over(["A", " b", " cd"], [" b", " c", "!"])
    candidate = candidate_over(["A", " b", " c", "d"], [None, " b", " c", None], first_generated=4)
    assert align_offsets(reference, candidate) == {0: 0, 1: 1}
    comparison = compare_sequences(reference, candidate)
    assert comparison.unaligned == 2 and "tokenizations differ" in comparison.notes[-1]


def test_reference_probability_of_the_candidate_token():
    reference = reference_over(PIECES, PREDICTIONS, margin=math.log(10))
    comparison = compare_sequences(reference, candidate_over(PIECES, [None, " b", " c", " d"], first_generated=3))
    assert comparison.positions[0].reference_prob_of_piece == pytest.approx(10 / (10 + len(VOCAB) - 1))


def test_a_flip_to_a_token_far_below_two_close_leaders_is_a_divergence():
    """A near tie is the candidate's token within NEAR_TIE_NATS of the reference's top-1, not any flip where the
    reference's own top two happen to be close."""
    reference = reference_over(PIECES, [" b", " c", " e", "!"], margin=3.0)
    reference.logprobs[2, VOCAB.index(" c")] = reference.logprobs[2, VOCAB.index(" e")] - 0.1   # the leaders close
    candidate = candidate_over(PIECES, [None, " b", " c", " d"], first_generated=3)
    last = compare_sequences(reference, candidate).positions[-1]
    assert last.margin_nats < 0.5 and last.gap_nats > 2.5
    assert not last.near_tie


def test_a_chat_answer_is_compared_from_its_first_token_after_the_prompt_the_reference_rendered():
    prompt = ("", "", "")                                   # the rendered prompt's tokens hold no text of the answer
    answer = ["A", " b", " c"]
    reference = ReferenceTokens(prompt + tuple(answer), (0, 0, 0, 0, 1, 3),
                                reference_over(["x"] * 6, ["!", "!", "A", " b", " c", "!"]).logprobs, VOCAB)
    rows = ({"A": 0.0, " e": -3.0}, {" b": 0.0, " e": -3.0}, {" c": 0.0, " e": -3.0})
    candidate = CandidateTokens("A b c", tuple(answer), (0, 1, 3), (None,) * 3, rows, 0, follows="<prompt>")
    comparison = compare_sequences(reference, candidate)
    assert comparison and [p.index for p in comparison.positions] == [0, 1, 2] and comparison.unaligned == 0
    assert comparison.headline.startswith("prompt: not compared (not echoed); greedy continuation: 3/3 tokens")
    assert any(note.startswith("a chat answer: its 3 generated tokens") for note in comparison.notes)
    wrong_first = CandidateTokens("A b c", tuple(answer), (0, 1, 3), (None,) * 3,
                                  ({" d": 0.0, "A": -3.0},) + rows[1:], 0, follows="<prompt>")
    sampled = compare_sequences(reference, wrong_first)   # its token is the reference's top-1; its own top-1 is not
    assert [(d.cause, d.checkpoint) for d in sampled.diagnoses] == [("sampler_not_greedy", "token 0")]
    reference_first = reference_over(["x"] * 6, ["!", "!", " d", " b", " c", "!"]).logprobs
    parted = compare_sequences(ReferenceTokens(reference.pieces, reference.offsets, reference_first, VOCAB), candidate)
    assert not parted and parted.first_divergence.index == 0
