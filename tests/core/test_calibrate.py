import numpy as np
import pytest

from parity.core.calibrate import FLOOR, MULTIPLE, calibrated_tolerance, check_same_tokens, noise_floors
from parity.core.compare import CompareConfig, compare
from parity.core.errors import OptionError
from parity.core.trace import make_trace

RNG = np.random.default_rng(5)
REFERENCE = {"layers.0.q": RNG.standard_normal((6, 16)), "layers.0.out": RNG.standard_normal((6, 16))}


def noisy(scale, seed):
    rng = np.random.default_rng(seed)
    return {name: value * (1 + scale * rng.standard_normal(value.shape)) for name, value in REFERENCE.items()}


def test_noise_floor_is_the_low_precision_runs_error():
    floors = noise_floors(make_trace(REFERENCE), make_trace(noisy(1e-3, 1)))
    assert set(floors) == set(REFERENCE)
    assert 5e-4 < floors["layers.0.q"].rel_l2 < 2e-3
    assert floors["layers.0.q"].position_rel_l2 >= floors["layers.0.q"].rel_l2


def test_a_candidate_with_noise_like_the_calibration_run_passes_and_ten_times_more_fails():
    config = CompareConfig(noise=noise_floors(make_trace(REFERENCE), make_trace(noisy(1e-3, 1))), noise_dtype="bfloat16")
    assert compare(make_trace(REFERENCE), make_trace(noisy(1e-3, 2)), config=config)
    failing = compare(make_trace(REFERENCE), make_trace(noisy(1e-1, 2)), config=config)
    assert not failing
    result = failing.result("layers.0.q")
    assert result.tolerance.calibrated and "over the bound" in result.reason and "x the noise" in result.reason
    assert f"{result.tolerance.max_rel_l2:.3g}" in result.reason          # the bound actually applied


def test_a_noise_floor_of_zero_is_said_as_such_not_as_a_huge_ratio():
    config = CompareConfig(noise=noise_floors(make_trace(REFERENCE), make_trace(REFERENCE)), noise_dtype="float32")
    result = compare(make_trace(REFERENCE), make_trace(noisy(1e-3, 2)), config=config).result("layers.0.q")
    assert result.failed and "noise floor 0:" in result.reason and "computes this checkpoint exactly" in result.reason
    assert "e+" not in result.reason and f"{FLOOR['float32']:.3g}" in result.reason   # the bound: the floor alone


def test_a_bug_at_one_position_fails_even_when_the_whole_tensor_is_within_bounds():
    reference_lowp = noisy(1e-3, 1)
    candidate = noisy(1e-3, 2)
    candidate["layers.0.out"] = candidate["layers.0.out"].copy()
    candidate["layers.0.out"][5] *= 1.02  # 2% at one token: under 3x the whole-tensor noise, far above one position's
    config = CompareConfig(noise=noise_floors(make_trace(REFERENCE), make_trace(reference_lowp)), noise_dtype="float32")
    comparison = compare(make_trace(REFERENCE), make_trace(candidate), config=config)
    assert comparison.result("layers.0.out").failed and comparison.first_divergence.position == 5


def test_calibrated_tolerance_bounds():
    from parity.core.results import NoiseFloor

    tolerance = calibrated_tolerance(NoiseFloor(0.01, 0.03), "bfloat16")
    assert tolerance.max_rel_l2 == pytest.approx(MULTIPLE * 0.01 + FLOOR["bfloat16"], rel=1e-12)
    assert tolerance.max_position_rel_l2 == pytest.approx(MULTIPLE * 0.03 + FLOOR["bfloat16"], rel=1e-12)
    assert "noise of bfloat16" in tolerance.basis


def test_exact_checkpoints_get_the_floor():
    config = CompareConfig(noise=noise_floors(make_trace(REFERENCE), make_trace(dict(REFERENCE))), noise_dtype="float32")
    assert compare(make_trace(REFERENCE), make_trace({k: v * (1 + 1e-8) for k, v in REFERENCE.items()}), config=config)
    assert not compare(make_trace(REFERENCE), make_trace({k: v * (1 + 1e-4) for k, v in REFERENCE.items()}), config=config)


def test_calibration_runs_must_share_the_tokens():
    with pytest.raises(OptionError, match="other token ids"):
        check_same_tokens(make_trace(REFERENCE, {"tokens": [1, 2]}), make_trace(REFERENCE, {"tokens": [1, 3]}))


def test_a_layer_whose_noise_dips_below_both_neighbours_is_lifted_and_nothing_else_moves():
    from parity.core.calibrate import without_dips
    from parity.core.results import NoiseFloor

    measured = [3.0e-4, 3.6e-4, 7.7e-5, 1.8e-4, 2.0e-4, 2.5e-4]   # layer 2 dips, as SmolLM2's layers.12.out did
    floors = {f"layers.{i}.out": NoiseFloor(value, 2 * value) for i, value in enumerate(measured)}
    floors["logits"] = NoiseFloor(1e-3, 2e-3)
    smoothed = without_dips(floors)
    assert smoothed["layers.2.out"] == NoiseFloor(1.8e-4, 3.6e-4)   # the lower of its neighbours
    unchanged = [name for name in floors if name != "layers.2.out"]
    assert all(smoothed[name] == floors[name] for name in unchanged)   # rising, falling, ends, other kinds


def test_a_positions_decode_noise_covers_its_neighbours_and_no_further():
    from parity.core.calibrate import neighbourhood_max

    noise = [1.0, 1.0, 1.0, 1.0, 1.0, 0.1, 1.0, 1.0, 1.0, 1.0, 1.0, 0.1, 0.1, 0.1, 0.1, 0.1, 0.1, 0.1, 0.1, 0.1]
    lifted = neighbourhood_max(noise, radius=4)
    assert lifted[5] == 1.0                 # a dip among larger neighbours
    assert lifted[14] == 1.0 and lifted[15] == 0.1 and lifted[19] == 0.1   # four positions on, no further
    assert all(after >= before for before, after in zip(noise, lifted))


def _heavy_channel_pair(seed: int, heavy_error: float):
    """A (T, D) checkpoint like Gemma 3's post-feed-forward norm: channel 3 scaled by 4,000 and near zero at
    position 5, where that one element is the row. Returns the reference and a rounding of it: 0.1% of each
    channel's size, and `heavy_error` at (5, 3)."""
    reference = np.random.default_rng(0).standard_normal((64, 32))
    reference[:, 3] *= 4000.0
    reference[5, 3] = 2.0                                     # the heavy channel passes near zero here
    rounding = np.random.default_rng(seed).standard_normal((64, 32)) * 1e-3 * np.abs(reference).mean(0)
    rounding[5, 3] = heavy_error
    return reference, reference + rounding


def test_a_row_one_heavy_channel_dominates_is_held_with_each_channel_weighted():
    """One element's rounding 4x the calibration run's, where that element is its row (Gemma 3 at 2,048 tokens,
    layers.4.mlp_post_norm against llama.cpp): within the bound once each channel is weighted by its scale."""
    reference, lowp = _heavy_channel_pair(1, heavy_error=4.0)
    _, candidate = _heavy_channel_pair(2, heavy_error=16.0)
    name = "layers.0.mlp_post_norm"
    config = CompareConfig(noise=noise_floors(make_trace({name: reference}), make_trace({name: lowp})),
                           noise_dtype="float32")
    result = compare(make_trace({name: reference}), make_trace({name: candidate}), config=config).result(name)
    assert result.metrics.position_rel_l2 > result.tolerance.max_position_rel_l2       # the plain bound is passed
    assert result.status == "pass" and result.metrics.channel_position_rel_l2 <= \
        result.tolerance.max_channel_position_rel_l2
    assert "heavily weighted channel" in result.tolerance.explain(result.metrics)


def test_a_wrong_row_fails_however_the_channels_are_weighted():
    """The same row, its light channels 4x what they should be: past the plain position bound, and past the
    weighted one too (the whole tensor's rel_l2, which the heavy channel fills, does not see it)."""
    reference, lowp = _heavy_channel_pair(1, heavy_error=4.0)
    _, candidate = _heavy_channel_pair(2, heavy_error=4.0)
    light = [channel for channel in range(32) if channel != 3]
    candidate[5, light] = 4.0 * reference[5, light]
    name = "layers.0.mlp_post_norm"
    config = CompareConfig(noise=noise_floors(make_trace({name: reference}), make_trace({name: lowp})),
                           noise_dtype="float32")
    result = compare(make_trace({name: reference}), make_trace({name: candidate}), config=config).result(name)
    assert result.metrics.rel_l2 <= result.tolerance.max_rel_l2
    assert result.status == "fail" and result.metrics.channel_position_rel_l2 > \
        result.tolerance.max_channel_position_rel_l2


def _massive_first_row(row_errors: list[float], seed: int) -> np.ndarray:
    """REFERENCE's layers.0.out with row 0 a thousand times the others (a massive activation), each row moved by
    the given relative error."""
    rng = np.random.default_rng(seed)
    reference = MASSIVE["layers.0.out"]
    direction = rng.standard_normal(reference.shape)
    direction /= np.linalg.norm(direction, axis=1, keepdims=True)
    return reference + np.asarray(row_errors)[:, None] * np.linalg.norm(reference, axis=1, keepdims=True) * direction


MASSIVE = {"layers.0.out": REFERENCE["layers.0.out"] * np.array([[1000.0]] + [[1.0]] * 5)}


def _compared(noise_rows: list[float], candidate_rows: list[float]):
    config = CompareConfig(noise=noise_floors(make_trace(MASSIVE), make_trace({"layers.0.out": _massive_first_row(
        noise_rows, 1)})), noise_dtype="float32")
    candidate = make_trace({"layers.0.out": _massive_first_row(candidate_rows, 2)})
    return compare(make_trace(MASSIVE), candidate, config=config).result("layers.0.out")


def test_a_whole_tensor_held_by_a_massive_position_is_measured_with_each_position_counted_once():
    # the calibration's draw at the massive position came out small (2e-4), the candidate's larger (1.2e-3), each
    # position within its bound: the whole tensor's rel_l2 is that one position's, 6x the noise's
    result = _compared([2e-4] + [1e-3] * 5, [1.2e-3] + [1e-3] * 5)
    assert not result.failed and result.metrics.rel_l2 > result.tolerance.max_rel_l2
    assert result.metrics.position_weighted_rel_l2 <= result.tolerance.max_position_weighted_rel_l2
    assert "with each position counted once" in result.tolerance.explain(result.metrics)


def test_counting_each_position_once_still_fails_an_error_over_every_position_and_one_at_the_massive_one():
    spread = _compared([2e-4] + [1e-3] * 5, [2.9e-3] * 6)   # every position under its bound, all of them near it
    assert spread.failed and spread.metrics.position_rel_l2 <= spread.tolerance.max_position_rel_l2
    massive = _compared([2e-4] + [1e-3] * 5, [4e-3] + [1e-3] * 5)   # the massive position past its own bound
    assert massive.failed


def test_a_tensor_without_positions_is_never_passed_by_counting_positions():
    # no token axis (a weight, a scalar): nothing to weigh, and its whole-tensor bound stands alone
    from parity.core.metrics import NORMS_ONLY, measure_pair
    from parity.core.results import NoiseFloor

    reference = RNG.standard_normal((6, 16))
    metrics = measure_pair(reference, reference * 1.1, NORMS_ONLY, token_axis=None).metrics
    assert metrics.position_weighted_rel_l2 is None
    tolerance = calibrated_tolerance(NoiseFloor(0.01, 0.03, position_weighted_rel_l2=0.5), "float32")
    assert not tolerance.admits(metrics)
