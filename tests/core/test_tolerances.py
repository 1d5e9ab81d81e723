import numpy as np
import pytest

from parity.core.errors import OptionError
from parity.core.tolerances import DTYPE_FACTOR, KIND_FACTOR, default_tolerance, lowest_precision, user_tolerance


def test_a_half_specified_tolerance_is_refused():
    with pytest.raises(OptionError, match="--atol was given without --rtol"):
        user_tolerance(1e-5, None)
    with pytest.raises(OptionError, match="--rtol was given without --atol"):
        user_tolerance(None, 1e-5)


def test_negative_or_nonfinite_tolerances_are_refused():
    for atol, rtol in [(-1.0, 0.0), (0.0, float("nan")), (float("inf"), 0.0)]:
        with pytest.raises(OptionError):
            user_tolerance(atol, rtol)


def test_user_tolerance_is_absolute():
    tolerance = user_tolerance(1e-3, 1e-2)
    assert (tolerance.atol, tolerance.rtol, tolerance.basis) == (1e-3, 1e-2, "user")
    assert user_tolerance(None, None) is None


def test_default_atol_follows_the_tensor_scale_and_kind():
    small, large = np.full(10, 0.01), np.full(10, 100.0)
    assert default_tolerance("out", "float32", large).atol == pytest.approx(1e4 * default_tolerance("out", "float32", small).atol)
    logits = default_tolerance("logits", "float32", small)
    norm = default_tolerance("attn_norm", "float32", small)
    assert logits.rtol == KIND_FACTOR["logits"] * norm.rtol


def test_lower_precision_gets_looser_defaults():
    values = np.ones(4)
    rtols = [default_tolerance("q", dtype, values).rtol for dtype in ("float64", "float32", "float16", "bfloat16")]
    assert rtols == sorted(rtols)
    assert set(DTYPE_FACTOR) == {"float64", "float32", "float16", "bfloat16"}


def test_lowest_precision_of_two_sides():
    assert lowest_precision("float64", "bfloat16") == "bfloat16"
    assert lowest_precision("float64", "float32", None) == "float32"
    assert lowest_precision(None, "int64") == "float32"


def test_one_dtype_table_serves_check_calibration_sanity_gradients_and_kernel_with_their_numbers():
    from parity.core.calibrate import FLOOR
    from parity.core.tolerances import (KERNEL_NOISE_FACTOR, PRECISIONS, calibration_floor, gradient_bound,
                                        kernel_tolerance, sanity_tolerance, unit_roundoff)

    dtypes = ("float64", "float32", "float16", "bfloat16")
    assert tuple(PRECISIONS) == dtypes
    assert [unit_roundoff(d) for d in dtypes] == [2.0 ** -53, 2.0 ** -24, 2.0 ** -11, 2.0 ** -8]
    assert [DTYPE_FACTOR[d] for d in dtypes] == [1e-6, 1e-4, 1e-2, 5e-2]
    assert [calibration_floor(d) for d in dtypes] == [FLOOR[d] for d in dtypes] == [1e-6, 1e-6, 2.0 ** -11, 2.0 ** -8]
    assert [(sanity_tolerance(d).rtol, sanity_tolerance(d).atol) for d in dtypes] == [
        (1e-3, 1e-4), (1e-3, 1e-4), (1e-2, 1e-2), (5e-2, 5e-2)]
    assert sanity_tolerance("bfloat16", rtol=0.2).rtol == 0.2 and sanity_tolerance("bfloat16", rtol=0.2).atol == 5e-2
    assert [gradient_bound(d) for d in dtypes] == [1e-9, 1e-4, 2e-2, 1e-1]
    kernel = kernel_tolerance(noise_max_abs=1e-3, reference_max_abs=2.0, dtype="bfloat16")
    assert KERNEL_NOISE_FACTOR == 4.0
    assert (kernel.atol, kernel.rtol) == (4.0 * 2.0 ** -8 * 2.0, 4.0 * 2.0 ** -8)
    assert gradient_bound("int8") == gradient_bound("float32")   # a dtype the table does not hold: float32's row


def test_a_declared_dtype_is_a_precision_only_where_the_reference_can_run_in_it():
    from parity.core.tolerances import float_precision, not_a_precision

    assert float_precision("bfloat16") == "bfloat16" and not_a_precision("bfloat16") is None
    assert not_a_precision(None) is None and float_precision(None) is None
    for declared in ("q8", "Q4_K_M", "int8", 3):
        assert float_precision(declared) is None
        assert "not a floating-point precision" in not_a_precision(declared)
