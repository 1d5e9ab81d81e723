"""missing_bias: the candidate differs from the reference by one row, the same at every position.

A bias dropped (Qwen2's q/k/v biases, which Llama-shaped loaders skip), added twice
or loaded for the wrong projection shifts every token by the same vector. When
the traces carry the parameters (--weights), the offset is matched with the bias.
"""

from __future__ import annotations

import numpy as np

from parity.core.metrics import rel_l2
from parity.core.names import inputs_of
from parity.core.results import Diagnosis
from parity.diagnose import register
from parity.diagnose.context import Context, matches, widened

MIN_POSITIONS = 3   # a constant row needs a few positions to be told from any other error
SHARED_INPUT = 0.5  # when the input's mean row holds more of its energy, any error of a linear op
                    # on it is nearly constant too (deep states of small random models: 0.99), so
                    # a constant offset is no evidence of a bias
BIAS_MATCH = 0.05   # rel_l2 of the offset against the recorded bias (or its negation)


@register("missing_bias")
def missing_bias(context: Context):
    for name, checkpoint, reference, candidate in context.focused():
        if reference.ndim != 2 or reference.shape[0] < MIN_POSITIONS or checkpoint.kind == "attn_probs":
            continue
        if not _diverse_input(context, name):
            continue
        offset = candidate.mean(axis=0) - reference.mean(axis=0)  # (width,): no (T, width) temporary
        residual = matches(candidate, reference + offset, reference)
        if residual is None:
            continue
        yield Diagnosis("missing_bias", name,
                        f"the candidate's {name} is the reference's plus one constant vector at every position (rel "
                        f"error {residual:.2g}; the vector's norm is {np.linalg.norm(offset):.3g}): "
                        f"{_which_bias(context, name, offset)}")
        return


def _diverse_input(context: Context, name: str) -> bool:
    """Do the rows of the reference's input to `name` differ enough from one position to the next
    that an error of the op's weight could not pass for a constant offset?"""
    sources = inputs_of(name, context.reference.tensors)
    if not sources:
        return False
    x = context.reference[sources[0]]  # as stored: float64 sums without a float64 copy of it
    if x.ndim != 2:
        return False
    energy = float(np.einsum("ij,ij->", x, x, dtype=np.float64))
    shared = x.shape[0] * float(np.sum(x.mean(axis=0, dtype=np.float64) ** 2))
    return energy > 0 and shared / energy <= SHARED_INPUT


def _which_bias(context: Context, name: str, offset: np.ndarray) -> str:
    bias_name = f"{name}.bias"
    if bias_name in context.reference and context.reference[bias_name].shape == offset.shape:
        bias = widened(context.reference[bias_name])
        if rel_l2(-bias, offset) <= BIAS_MATCH:
            return f"it equals minus the reference's {bias_name}: the bias was dropped"
        if rel_l2(bias, offset) <= BIAS_MATCH:
            return f"it equals the reference's {bias_name}: the bias was added twice"
    return ("a bias dropped, added twice or another projection's (Qwen2 has biases on q, k and v that "
            "Llama-shaped loaders skip); rerun with --weights to match it with the bias")
