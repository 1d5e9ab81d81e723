"""Running the reference at a candidate's precision: the calibration run and the decode bounds.

A candidate that knows its precision hands the check one of these (`candidate.numerics`):

    DtypeNumerics("bfloat16")   the reference loaded in bfloat16 (capture/hf); in float32, rounded as
                                ports round it (at_precision below)
    LlamaCppNumerics(...)       a float32 copy of the reference with llama.cpp's rounding emulated
                                (capture/llamacpp/candidate.py)

Each says what it runs (`label`, and `dtype` for the floor of the calibrated bound),
gives the reference model that computes at that precision, and the bound on decoded
logits at each position.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class DtypeNumerics:
    """The candidate computes in `dtype`: the reference is loaded in it."""

    dtype: str

    def __repr__(self) -> str:
        return f"<DtypeNumerics {self.dtype}>"

    @property
    def label(self) -> str | None:
        return _LABELS.get(self.dtype)   # else the dtype names it

    def needed(self, reference_dtype: str) -> bool:
        """Whether a run at this precision differs from the reference's own: at a lower one, or in float64, whose
        reference computes RoPE's tables (and its norms and softmax) in float32, as transformers does, and a port
        may compute them otherwise."""
        return self.dtype != reference_dtype or self.dtype == "float64"

    @contextmanager
    def reference(self, reference_model, placement: Any = None):
        """The reference model loaded at this precision (an HFModel), computing as a port at it does
        (`at_precision`), freed after."""
        from parity.capture.hf.model import load_model

        loaded = load_model(reference_model.path, dtype=self.dtype, placement=placement)
        if reference_model.taken:
            loaded.take_weights(reference_model.taken)   # a candidate's weights the reference computes with
        with at_precision(loaded) as model:
            yield model

    def decode_bounds(self, reference_model, sequence: list[int], reference_logits, positions, *,
                      noise_logits=None) -> tuple[list[float], str]:
        """The rel_l2 each decoded position's logits may differ from the full pass's by, and what it is
        (`noise_logits`: this precision's run over `sequence`, where already made; a dtype's bound is its table's)."""
        from parity.core.tolerances import DTYPE_FACTOR, KIND_FACTOR

        dtype = self.dtype if self.dtype in DTYPE_FACTOR else "float32"
        return [2 * DTYPE_FACTOR[dtype] * KIND_FACTOR["logits"]] * len(positions), f"{dtype} default for logits"


PORT_FLOAT32_LABEL = "float32 as ports round it (one-term sums, RoPE frequencies)"
PORT_FLOAT64_LABEL = "float64 with RoPE's tables in float64, frequencies rounded another way"
_LABELS = {"float32": PORT_FLOAT32_LABEL, "float64": PORT_FLOAT64_LABEL}


@contextmanager
def at_precision(model):
    """`model` (an HFModel) computing as a port at its dtype does: in float32, its projections' sums rounded
    one term at a time (capture/hf/one_term_sums.py) and its RoPE frequencies rounded another way
    (capture/hf/rope_frequencies.py); in float64, RoPE's angles and tables computed in float64 from frequencies
    so moved (capture/hf/rope_tables.py): transformers computes them in float32 even in a float64 model, so a
    float64 port that computes them in float64, or in float32 its own way, differs from the reference by that
    rounding (4e-8 at q_rope over 16 tokens, against the 1e-9 float64 was held to before); other dtypes as
    loaded."""
    if model.dtype not in _LABELS:
        yield model
        return
    from parity.capture.hf.one_term_sums import one_term_sums
    from parity.capture.hf.rope_frequencies import rounded_frequencies

    if model.dtype == "float64":
        from parity.capture.hf.rope_tables import float64_tables

        with float64_tables(model.model), rounded_frequencies(model.model):
            yield model
        return
    with one_term_sums(model.model), rounded_frequencies(model.model):
        yield model


UNKNOWN = DtypeNumerics("float32")   # the decode bound of a candidate whose precision is not known
