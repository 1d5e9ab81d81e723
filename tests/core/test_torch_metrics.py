"""The torch metric pass gives the metrics the numpy pass gives, on the device that holds the pair."""

import math

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from parity.core import torch_metrics  # noqa: E402
from parity.core.metrics import measure_pair  # noqa: E402
from parity.core.results import Tolerance  # noqa: E402
from parity.core.tolerances import default_tolerance_rule  # noqa: E402

NORMS_ONLY = Tolerance(atol=float("inf"), rtol=0.0, basis="norms")
FIXED = Tolerance(atol=1e-4, rtol=1e-3, basis="fixed")


def assert_same_measurement(reference: np.ndarray, candidate: np.ndarray, tolerance, token_axis=0, device="cpu"):
    on_host = measure_pair(reference, candidate, tolerance, token_axis=token_axis)
    on_device = measure_pair(torch.from_numpy(reference).to(device), torch.from_numpy(candidate).to(device), tolerance,
                             token_axis=token_axis)
    for field in on_host.metrics.__dataclass_fields__:
        host_value, device_value = getattr(on_host.metrics, field), getattr(on_device.metrics, field)
        if isinstance(host_value, float):  # float32 chunk sums on the host, float64 on the device
            assert (host_value == device_value or (math.isnan(host_value) and math.isnan(device_value))
                    or math.isclose(host_value, device_value, rel_tol=1e-6, abs_tol=1e-12)), (field, host_value,
                                                                                             device_value)
        else:
            assert host_value == device_value, (field, host_value, device_value)
    np.testing.assert_allclose(on_device.per_position, on_host.per_position, rtol=1e-6)
    assert math.isclose(on_device.tolerance.atol, on_host.tolerance.atol, rel_tol=1e-6)
    assert on_device.tolerance.rtol == on_host.tolerance.rtol
    return on_device


@pytest.fixture
def pair():
    rng = np.random.default_rng(0)
    reference = rng.standard_normal((16, 24), dtype=np.float32)
    return reference, reference + np.float32(1e-3) * rng.standard_normal((16, 24), dtype=np.float32)


@pytest.mark.parametrize("tolerance", [NORMS_ONLY, FIXED, default_tolerance_rule("out", "float32")])
def test_a_noisy_pair_measures_the_same(pair, tolerance):
    measured = assert_same_measurement(*pair, tolerance)
    assert measured.metrics.numel == 16 * 24 and measured.metrics.rel_l2 > 0


def test_the_token_axis_inside_the_tensor_as_attention_probabilities_have_it():
    rng = np.random.default_rng(1)
    reference = rng.random((3, 8, 8)).astype(np.float32)
    candidate = reference + np.float32(1e-2) * rng.standard_normal((3, 8, 8)).astype(np.float32)
    measured = assert_same_measurement(reference, candidate, FIXED, token_axis=1)
    assert measured.per_position.shape == (8,)


def test_non_finite_values_agree_or_mismatch_as_on_the_host(pair):
    reference, candidate = (array.copy() for array in pair)
    reference[1, 2] = candidate[1, 2] = np.nan            # agreement
    reference[2, 3] = candidate[2, 3] = np.inf            # agreement
    candidate[4, 5] = np.nan                              # mismatch
    candidate[7, 1] = -np.inf                             # mismatch
    reference[6, 7] = 0.0                                 # no relative error there
    measured = assert_same_measurement(reference, candidate, FIXED)
    assert measured.metrics.max_abs == math.inf and measured.metrics.mismatched >= 2
    assert (measured.metrics.nan_reference, measured.metrics.nan_candidate) == (1, 2)
    assert (measured.metrics.inf_reference, measured.metrics.inf_candidate) == (1, 2)


def test_scalars_empty_and_integer_tensors():
    assert_same_measurement(np.array(3.0, np.float32), np.array(3.5, np.float32), NORMS_ONLY)
    empty = assert_same_measurement(np.zeros((0, 4), np.float32), np.zeros((0, 4), np.float32), NORMS_ONLY)
    assert empty.metrics.numel == 0
    ids = np.arange(12).reshape(3, 4)
    assert assert_same_measurement(ids, ids + 1, NORMS_ONLY).metrics.max_abs == 1.0


def test_chunks_give_the_same_result_as_one_pass(pair, monkeypatch):
    monkeypatch.setitem(torch_metrics.CHUNK_ELEMENTS, "cpu", 50)   # 2 rows of 24 per chunk
    rng = np.random.default_rng(2)
    assert_same_measurement(*pair, FIXED)
    probabilities = rng.random((3, 8, 8)).astype(np.float32)
    assert_same_measurement(probabilities, probabilities * np.float32(1.01), FIXED, token_axis=1)
    # the largest error sits in a later chunk, and its index is the whole tensor's
    reference, candidate = (array.copy() for array in pair)
    candidate[13, 5] += 1.0
    assert assert_same_measurement(reference, candidate, FIXED).metrics.worst_index == (13, 5)


def test_unusable_pairs_are_refused_as_on_the_host():
    with pytest.raises(ValueError, match="shapes differ"):
        measure_pair(torch.zeros(2, 3), torch.zeros(3, 2), NORMS_ONLY)
    with pytest.raises(TypeError, match="only real numeric tensors"):
        measure_pair(torch.zeros(2, dtype=torch.complex64), torch.zeros(2, dtype=torch.complex64), NORMS_ONLY)


def test_a_numpy_side_is_measured_on_the_tensors_device(pair):
    reference, candidate = pair
    mixed = measure_pair(reference, torch.from_numpy(candidate), FIXED).metrics
    assert math.isclose(mixed.rel_l2, measure_pair(reference, candidate, FIXED).metrics.rel_l2, rel_tol=1e-6)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_on_a_cuda_device(pair):
    reference, candidate = (array.copy() for array in pair)
    candidate[3, 3] = np.nan
    assert_same_measurement(reference, candidate, FIXED, device="cuda")
