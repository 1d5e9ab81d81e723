import numpy as np
import pytest

from parity.core.generation import (check_sampler, first_divergence, greedy, log_softmax, near_tie_margins,
                                    reference_sampler, teacher_forced)

VOCAB = 6


def table_model(next_of: dict[int, list[float]]):
    """logits(ids) -> (T, V): each row's logits depend on that position's token only."""
    def logits(ids):
        return np.array([next_of.get(token, [0.0] * VOCAB) for token in ids])
    return logits


REFERENCE = table_model({0: [0, 5, 0, 0, 0, 0], 1: [0, 0, 5, 0, 0, 0], 2: [0, 0, 0, 5, 4.9, 0], 3: [9, 0, 0, 0, 0, 0]})


def test_greedy_follows_each_argmax():
    tokens, rows = greedy(REFERENCE, [0], 3)
    assert tokens == [1, 2, 3] and len(rows) == 3


def test_a_flip_between_the_top_two_within_the_margin_is_a_near_tie():
    reference_tokens, rows = greedy(REFERENCE, [0], 3)
    divergence = first_divergence(reference_tokens, [1, 2, 4], rows)
    assert (divergence.step, divergence.reference_token, divergence.candidate_token) == (2, 3, 4)
    assert divergence.candidate_rank == 1 and divergence.near_tie and divergence.margin_nats == pytest.approx(0.1)


def test_a_flip_to_an_unlikely_token_is_a_real_divergence():
    reference_tokens, rows = greedy(REFERENCE, [0], 3)
    divergence = first_divergence(reference_tokens, [5, 2, 3], rows)
    assert divergence.step == 0 and not divergence.near_tie


def test_a_flip_to_the_third_token_within_the_margin_of_the_top_is_a_near_tie():
    rows = [log_softmax(np.array([5.0, 4.95, 4.9, 0, 0, 0]))]
    divergence = first_divergence([0], [2], rows)
    assert divergence.candidate_rank == 2 and divergence.candidate_gap_nats == pytest.approx(0.1)
    assert divergence.near_tie


def test_near_tie_margins_follow_how_far_the_precision_moves_the_top_gaps_there():
    rng = np.random.default_rng(0)
    reference = rng.standard_normal((40, 50)) * 3
    noise = reference.copy()
    noise[20, np.argsort(reference[20])[-2]] += 1.5        # the noise run narrows one position's top gap by 1.5
    noise[:, :] += 1e-4 * rng.standard_normal(noise.shape)
    margins = near_tie_margins(reference, noise, start=1)    # per predicted position 1..39: rows 0..38
    assert len(margins) == 39
    assert margins[20] == pytest.approx(3 * 1.5, rel=1e-2)              # row 20 predicts position 21: index 20 ...
    assert all(margin == pytest.approx(4.5, rel=1e-2) for margin in margins[16:25])   # ... and its 4 neighbours
    assert all(margin == 0.5 for margin in margins[:16] + margins[25:])  # elsewhere the fixed floor


def test_a_flip_the_precision_does_not_explain_stays_a_real_disagreement():
    """A candidate that flips confident tokens where a run at its precision moves no gap: not excused."""
    import dataclasses

    reference = REFERENCE([0, 1, 2, 3])
    candidate = reference.copy()
    candidate[0] = [0, 0, 9, 0, 0, 0]                         # predicts 2 where the reference predicts 1 by 5 nats
    forced = teacher_forced(reference, candidate, start=1)
    calibrated = dataclasses.replace(forced, near_tie_nats=near_tie_margins(reference, reference + 1e-6, start=1))
    assert forced.real_disagreements == calibrated.real_disagreements == [0]
    excused = dataclasses.replace(forced, near_tie_nats=near_tie_margins(reference, candidate, start=1))
    assert excused.real_disagreements == []                   # the same flip, made by the precision itself: noise


def test_teacher_forced_kl_and_agreement():
    sequence = [0, 1, 2, 3]
    reference = REFERENCE(sequence)
    same = teacher_forced(reference, reference, start=1)
    assert same.kl == pytest.approx((0.0, 0.0, 0.0), abs=1e-12) and all(same.top1) and same.real_disagreements == []
    shuffled = reference.copy()
    shuffled[1] = [5, 0, 0, 0, 0, 0]   # predicts 0 where the reference predicts 2
    different = teacher_forced(reference, shuffled, start=1)
    assert different.top1 == (True, False, True) and different.real_disagreements == [1]
    assert different.kl[1] > 1


def test_reference_sampler_top_k_and_top_p():
    logits = np.log(np.array([0.5, 0.3, 0.15, 0.05]))
    np.testing.assert_allclose(reference_sampler(logits, 1.0, None, None), [0.5, 0.3, 0.15, 0.05])
    np.testing.assert_allclose(reference_sampler(logits, 1.0, 2, None), [0.625, 0.375, 0, 0])
    np.testing.assert_allclose(reference_sampler(logits, 1.0, None, 0.7), [0.625, 0.375, 0, 0])
    assert reference_sampler(logits, 0.5, None, None)[0] > 0.5


def test_a_sampler_with_the_wrong_temperature_is_caught_and_its_temperature_fitted():
    rows = np.random.default_rng(0).standard_normal((4, 50)) * 3
    assert check_sampler(reference_sampler, rows, 0.7, None, None)
    squared = lambda logits, t, k, p: reference_sampler(logits, t * t, k, p)  # noqa: E731
    result = check_sampler(squared, rows, 0.7, None, None)
    assert not result and result.first_step == 0
    assert result.fitted_temperature == pytest.approx(0.49, rel=0.02)


def test_log_softmax_is_normalized():
    assert np.exp(log_softmax(np.array([1.0, 2.0, 3.0]))).sum() == pytest.approx(1.0)


def test_decode_consistency_first_step_over_its_bound():
    from parity.core.decode_consistency import compare_decode

    full = np.eye(4)
    incremental = full.copy()
    incremental[2, 0] = 0.5
    result = compare_decode(full, incremental, [1e-3] * 4, prompt_length=5, basis="test")
    assert not result and result.first_step == 2 and result.position == 6
    assert compare_decode(full, full, [1e-3] * 4, prompt_length=5, basis="test")
