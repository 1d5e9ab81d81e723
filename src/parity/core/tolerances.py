"""Default tolerances, per dtype and per checkpoint kind, as data.

A checkpoint passes when every element satisfies
    |candidate - reference| <= atol + rtol * |reference|.

Defaults: `rtol` comes from the dtype row; `atol` is the same factor times the
reference tensor's RMS, because activations in a residual stream grow by orders
of magnitude from the embedding to the last layer, and an absolute atol fit for
one is meaningless for the other. Both are then multiplied by the kind's factor.
A user's --atol/--rtol replace this: they are absolute and apply to every
checkpoint, and must be given together.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from parity.core.errors import OptionError
from parity.core.metrics import rms
from parity.core.results import Tolerance

# dtype -> relative factor. Each is roughly 10-50x the dtype's unit roundoff, the
# spread that a reordered reduction (another matmul kernel, another summation
# order) produces over the reduction lengths of a small-to-mid LM.
DTYPE_FACTOR: dict[str, float] = {
    "float64": 1e-9,    # eps 1.1e-16: any bug is many orders above this
    "float32": 1e-4,    # eps 6.0e-8 : reordered K=4096 dot products stay near 1e-5
    "float16": 1e-2,    # eps 4.9e-4 : storing each op's output in fp16 costs ~1e-3
    "bfloat16": 5e-2,   # eps 3.9e-3 : 8 mantissa bits; each rounding is ~0.4%
}

# kind -> multiplier on both atol and rtol, by how much arithmetic sits between
# the checkpoint and the previous one.
KIND_FACTOR: dict[str, float] = {
    "embed": 1.0,        # a table lookup: any difference is a cast or a bug
    "q": 2.0, "k": 2.0, "v": 2.0,          # one matmul each
    "attn_probs": 2.0,   # exp() turns a small score error into a relative one
    "attn_ctx": 2.0,     # a second matmul, over S
    "attn_out": 2.0,     # the output projection
    "mlp_gate": 2.0, "mlp_up": 2.0, "mlp_fc": 2.0, "mlp_out": 2.0,
    "logits": 4.0,       # the widest matmul, vocabulary-sized output
}
DEFAULT_KIND_FACTOR = 1.0  # norms, RoPE, activations, residual adds: elementwise ops

# The precision that bounds a comparison is the lower of the two sides.
_PRECISION_ORDER = ("float64", "float32", "float16", "bfloat16")


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
    factor = DTYPE_FACTOR.get(dtype, DTYPE_FACTOR["float32"]) * KIND_FACTOR.get(kind, DEFAULT_KIND_FACTOR)

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
