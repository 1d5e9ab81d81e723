"""What `parity bench` measured: each side's prefill and decode speed and memory, and their ratio."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class BenchReport:
    reference: dict[str, Any]
    candidate: dict[str, Any]
    options: dict[str, Any]

    def __repr__(self) -> str:
        return f"<BenchReport prefill {self.ratio('prefill_tokens_per_s'):.2f}x decode {self.ratio('decode_tokens_per_s'):.2f}x>"

    def ratio(self, key: str) -> float | None:
        """candidate / reference for a throughput (above 1: the candidate is faster)."""
        reference, candidate = self.reference.get(key), self.candidate.get(key)
        return candidate / reference if reference and candidate else None

    def to_dict(self) -> dict[str, Any]:
        return {"options": self.options, "reference": self.reference, "candidate": self.candidate,
                "speedup": {"prefill": self.ratio("prefill_tokens_per_s"), "decode": self.ratio("decode_tokens_per_s")}}
