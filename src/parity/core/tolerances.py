"""Tolerances as data: one table per dtype that every check reads, and one per checkpoint kind.

The dtype table (PRECISIONS) serves check and compare (uncalibrated defaults, and
the floor of calibrated ones), sanity, gradients and kernel, each through a small
function below. A checkpoint of check passes when every element satisfies
    |candidate - reference| <= atol + rtol * |reference|.

Check's defaults: `rtol` comes from the dtype row; `atol` is the same factor times the
reference tensor's RMS, because activations in a residual stream grow by orders
of magnitude from the embedding to the last layer, and an absolute atol fit for
one is meaningless for the other. Both are then multiplied by the kind's factor.
A user's --atol/--rtol replace this: they are absolute and apply to every
checkpoint, and must be given together.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from parity.core.errors import OptionError
from parity.core.metrics import rms
from parity.core.results import Tolerance


@dataclass(frozen=True)
class Precision:
    """What one floating dtype is held to, by each check that compares at it."""

    unit_roundoff: float          # u: the relative error of one rounding to this dtype
    check: float                  # check/compare, uncalibrated: rtol, and atol as this times the reference's RMS
    calibration_floor: float      # calibrated check: the rel_l2 allowed where this precision alone costs nothing
    sanity: tuple[float, float]   # sanity's component tests: (rtol, atol), elementwise
    gradient: float               # check --gradients: the bound on each gradient's rel_l2


# The check factors are roughly 10-50x the unit roundoff: the spread a reordered reduction (another
# matmul kernel, another summation order) produces over the reduction lengths of a small-to-mid LM.
# The gradient bounds are a few hundred times the unit roundoff, for the sums over the sequence and
# the layers that backward adds.
PRECISIONS: dict[str, Precision] = {
    "float64": Precision(
        unit_roundoff=2.0**-53,      # 1.1e-16
        check=1e-6,                  # float32's roundoff x 16: the reference itself is float32 in places (below)
        # a float64 candidate is calibrated against the reference's own precision, which is float32's where it
        # matters: transformers computes RoPE's tables, RMSNorm and the softmax in float32 even in a float64 model
        calibration_floor=1e-6,
        sanity=(1e-3, 1e-4),         # the course script's defaults; any bug is far above them
        gradient=1e-9,
    ),
    "float32": Precision(
        unit_roundoff=2.0**-24,      # 6.0e-8
        check=1e-4,                  # reordered K=4096 dot products stay near 1e-5
        calibration_floor=1e-6,      # the same, in float32 (llama.cpp's RMSNorm differs from transformers' by 6e-8)
        sanity=(1e-3, 1e-4),         # the course script's defaults
        gradient=1e-4,
    ),
    "float16": Precision(
        unit_roundoff=2.0**-11,      # 4.9e-4
        check=1e-2,                  # storing each op's output in fp16 costs ~1e-3
        calibration_floor=2.0**-11,  # one rounding of the output
        sanity=(1e-2, 1e-2),         # 10 mantissa bits: each op's output rounding is ~5e-4, a layer adds up to ~1e-3
        gradient=2e-2,
    ),
    "bfloat16": Precision(
        unit_roundoff=2.0**-8,       # 3.9e-3
        check=5e-2,                  # 8 mantissa bits; each rounding is ~0.4%
        calibration_floor=2.0**-8,   # one rounding of the output
        sanity=(5e-2, 5e-2),         # 8 mantissa bits: each rounding is ~4e-3
        gradient=1e-1,
    ),
}
DTYPE_FACTOR: dict[str, float] = {dtype: row.check for dtype, row in PRECISIONS.items()}  # check's column

# A kernel (parity kernel) may round differently from PyTorch's (other order, other accumulator) by a few
# times the reference's own error at the dtype.
KERNEL_NOISE_FACTOR = 4.0

# kind -> multiplier on both atol and rtol, by how much arithmetic sits between
# the checkpoint and the previous one.
KIND_FACTOR: dict[str, float] = {
    "embed": 1.0,        # a table lookup: any difference is a cast or a bug
    "pos_embed": 1.0,    # the same, for learned position rows
    "q": 2.0, "k": 2.0, "v": 2.0,          # one matmul each
    "attn_probs": 2.0,   # exp() turns a small score error into a relative one
    "attn_ctx": 2.0,     # a second matmul, over S
    "attn_out": 2.0,     # the output projection
    "mlp_gate": 2.0, "mlp_up": 2.0, "mlp_fc": 2.0, "mlp_out": 2.0,
    "logits": 4.0,       # the widest matmul, vocabulary-sized output
    "embed_tokens": 1.0,  # a table lookup
    "qkv": 2.0, "mlp_gate_up": 2.0,      # fused projections: one matmul
    "moe_router_logits": 2.0, "moe_weights": 2.0,  # a matmul; a softmax over its output
    "moe_routed": 2.0, "moe_shared": 2.0,  # expert MLPs: matmuls
    "lm_head_out": 4.0,  # the output head before capping or scaling
}
# moe_experts holds integer ids: compared as agreement (core/routing.py), never by these.
DEFAULT_KIND_FACTOR = 1.0  # norms, RoPE, activations, residual adds: elementwise ops

# The precision that bounds a comparison is the lower of the two sides (the table runs from the most precise).
_PRECISION_ORDER = tuple(PRECISIONS)


def precision(dtype: str | None) -> Precision:
    """The table's row for `dtype`; float32's for a dtype it does not hold."""
    return PRECISIONS.get(dtype, PRECISIONS["float32"])


def unit_roundoff(dtype: str) -> float:
    return precision(dtype).unit_roundoff


def calibration_floor(dtype: str) -> float:
    """The rel_l2 a calibrated bound allows on top of the noise (core/calibrate.py)."""
    return precision(dtype).calibration_floor


def sanity_tolerance(dtype: str, *, rtol: float | None = None, atol: float | None = None) -> Tolerance:
    """The elementwise tolerance of sanity's component tests; the user's rtol or atol replaces the table's."""
    default_rtol, default_atol = precision(dtype).sanity
    return Tolerance(atol=atol if atol is not None else default_atol, rtol=rtol if rtol is not None else default_rtol,
                     basis=dtype)


def gradient_bound(dtype: str) -> float:
    """The bound on each gradient's rel_l2 against the reference's, at the lower precision of the two."""
    return precision(dtype).gradient


def kernel_tolerance(noise_max_abs: float, reference_max_abs: float, dtype: str, floor: float = 0.0) -> Tolerance:
    """A kernel case's tolerance: KERNEL_NOISE_FACTOR times the noise of the dtype (kernel/cases.py): the
    reference's own error at it, one roundoff of the largest value, or `floor`, whichever is largest."""
    unit = unit_roundoff(dtype)
    return Tolerance(atol=KERNEL_NOISE_FACTOR * max(noise_max_abs, unit * reference_max_abs, floor),
                     rtol=KERNEL_NOISE_FACTOR * unit, basis=f"{KERNEL_NOISE_FACTOR:g}x the reference's own error at {dtype}")


def float_precision(declared) -> str | None:
    """A trace's declared dtype where it is a floating-point precision the reference can be run in; None for
    anything else (a quantized format's name, "q8" or "Q4_K_M", which says how weights are stored, not what
    precision the arithmetic keeps)."""
    return declared if isinstance(declared, str) and declared in PRECISIONS else None


def not_a_precision(declared) -> str | None:
    """Why a trace's declared dtype cannot be calibrated at, where it is given and is not a float precision."""
    if declared is None or float_precision(declared) is not None:
        return None
    return (f"its metadata's dtype is {str(declared)[:40]!r}, not a floating-point precision the reference can be "
            f"run in ({', '.join(PRECISIONS)})")


def lowest_precision(*dtypes: str | None) -> str:
    """The least precise of the given floating dtypes; float32 when none is known."""
    known = [dtype for dtype in dtypes if dtype in _PRECISION_ORDER]
    if not known:
        return "float32"
    return max(known, key=_PRECISION_ORDER.index)


def default_tolerance(kind: str, dtype: str, reference: np.ndarray) -> Tolerance:
    return default_tolerance_rule(kind, dtype)(rms(reference))


def default_tolerance_rule(kind: str, dtype: str) -> Callable[[float], Tolerance]:
    """The default tolerance as a function of the reference's RMS, which the metrics pass measures."""
    factor = precision(dtype).check * KIND_FACTOR.get(kind, DEFAULT_KIND_FACTOR)

    def tolerance(reference_rms: float) -> Tolerance:
        return Tolerance(atol=factor * reference_rms, rtol=factor, basis=f"{dtype} default, atol x rms")

    return tolerance


def user_tolerance(atol: float | None, rtol: float | None) -> Tolerance | None:
    """The user's tolerance, or None to use defaults. Half of a pair is refused:
    atol alone would silently keep a default rtol the user did not see."""
    if atol is None and rtol is None:
        return None
    if atol is None or rtol is None:
        given, other = ("--atol", "--rtol") if atol is not None else ("--rtol", "--atol")
        raise OptionError(f"{given} was given without {other}; give both (e.g. --atol 1e-5 --rtol 1e-4) or neither")
    if atol < 0 or rtol < 0 or not np.isfinite(atol) or not np.isfinite(rtol):
        raise OptionError(f"tolerances must be finite and non-negative, got --atol {atol} --rtol {rtol}")
    return Tolerance(atol=float(atol), rtol=float(rtol), basis="user")
