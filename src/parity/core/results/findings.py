"""What a comparison says beyond its numbers: the causes named from evidence, and the checks that did not run."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Diagnosis:
    """A likely cause, named from evidence in the tensors."""

    cause: str
    checkpoint: str
    message: str
    # "confirmed": the cause's inverse applied to the candidate restores the reference within tolerance;
    # "likely": it explains most of the error, not all; None: a cause with no inverse to apply
    confidence: str | None = None

    def __repr__(self) -> str:
        return f"<Diagnosis {self.cause} at {self.checkpoint}>"


@dataclass(frozen=True)
class NotChecked:
    """A check that could not run (or was not asked for), and why: never a silent pass."""

    check: str      # one of CHECKS
    reason: str

    def __repr__(self) -> str:
        return f"<NotChecked {self.check}: {self.reason}>"


NOT_ASKED = "not asked for"   # the reason of an opt-in check left off, followed by ": " and what it does

# The checks beyond one forward pass that `parity check` runs when it can, in report order.
CHECKS = ("calibration", "weights", "replay", "greedy", "decode", "kv_cache", "chunked_prefill", "padding")
