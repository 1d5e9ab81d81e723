"""precision_noise on a calibrated pass: it says how close the closest checkpoint came, and by which measure."""

import numpy as np

from parity.core.calibrate import noise_floors
from parity.core.compare import CompareConfig
from parity.core.trace import make_trace
from parity.diagnose.compared import compare_and_diagnose

RNG = np.random.default_rng(3)
REFERENCE = {"layers.0.out": RNG.standard_normal((6, 16)) * np.array([[1000.0]] + [[1.0]] * 5)}  # a massive row


def moved(row_errors: list[float], seed: int) -> dict:
    rng = np.random.default_rng(seed)
    reference = REFERENCE["layers.0.out"]
    direction = rng.standard_normal(reference.shape)
    direction /= np.linalg.norm(direction, axis=1, keepdims=True)
    scale = np.asarray(row_errors)[:, None] * np.linalg.norm(reference, axis=1, keepdims=True)
    return {"layers.0.out": reference + scale * direction}


def diagnosed(candidate_rows: list[float]):
    noise = noise_floors(make_trace(REFERENCE), make_trace(moved([2e-4] + [1e-3] * 5, 1)))
    config = CompareConfig(noise=noise, noise_dtype="float32")
    return compare_and_diagnose(make_trace(REFERENCE), make_trace(moved(candidate_rows, 2)), config)


def test_a_pass_held_by_a_massive_position_says_it_was_counted_once_there():
    comparison = diagnosed([1.2e-3] + [1e-3] * 5)
    assert comparison.passed
    message = next(d.message for d in comparison.diagnoses if d.cause == "precision_noise")
    assert "with each position counted once" in message and "massive activation" in message


def test_a_pass_within_the_plain_bound_says_nothing_more():
    comparison = diagnosed([2e-4] + [1e-3] * 5)
    message = next(d.message for d in comparison.diagnoses if d.cause == "precision_noise")
    assert "counted once" not in message
