"""KV-cache and decode-path consistency: token-by-token decoding after a prefill against one full pass.

Row 0 is the last prompt position (from the prefill), row k the k-th token
decoded through the cache. Each row's logits must match the full pass's logits
at the same position to within a bound on rel_l2 (the dtype's table, or the
candidate's calibrated noise at that position).
"""

from __future__ import annotations

from dataclasses import dataclass

from parity.core.metrics import rel_l2


@dataclass(frozen=True)
class DecodeConsistency:
    prompt_length: int
    rel_l2: tuple[float, ...]            # per row, incremental against full
    bounds: tuple[float, ...]
    basis: str
    first_step: int | None               # first row over its bound
    first_checkpoint: str | None = None  # where, inside that step, the decode path first parts (torch candidates)

    def __bool__(self) -> bool:
        return self.first_step is None

    def __repr__(self) -> str:
        where = f", parts at step {self.first_step}" if self.first_step is not None else ""
        return f"<DecodeConsistency {len(self.rel_l2)} steps{where}>"

    @property
    def position(self) -> int | None:
        return None if self.first_step is None else self.prompt_length - 1 + self.first_step


def compare_decode(full_rows, incremental_rows, bounds, *, prompt_length: int, basis: str) -> DecodeConsistency:
    errors = tuple(rel_l2(full, incremental) for full, incremental in zip(full_rows, incremental_rows))
    first = next((step for step, (error, bound) in enumerate(zip(errors, bounds)) if not error <= bound), None)
    return DecodeConsistency(prompt_length, errors, tuple(bounds), basis, first)
