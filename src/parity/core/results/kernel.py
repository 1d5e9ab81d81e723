"""What `parity kernel` found: per case, the forward and backward comparison; the verdict; the timing."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

PASSED, FAILED, BROKEN_AUTOGRAD = "passed", "failed", "broken_autograd"
NOT_ASKED = "not asked (--no-backward)"


@dataclass(frozen=True)
class CaseResult:
    """One length x dtype x condition. `forward` and `backward` are plain dicts, as written to the JSON:
    {passed, max_abs, rel_l2, ...}, or for a backward that could not run {checked: False, reason}."""

    dims: dict[str, int]
    dtype: str
    condition: str
    forward: dict[str, Any]
    backward: dict[str, Any]

    def __bool__(self) -> bool:
        backward = self.backward.get("passed") is True or self.backward.get("reason") == NOT_ASKED
        return self.forward.get("passed") is True and backward

    @property
    def length(self) -> int:
        return self.dims["T"]

    @property
    def broken_autograd(self) -> bool:
        return bool(self.backward.get("broken_autograd"))

    def __repr__(self) -> str:
        return f"<CaseResult T={self.length} {self.dtype} {self.condition} {'passed' if self else 'failed'}>"

    def to_dict(self) -> dict[str, Any]:
        return {"dims": self.dims, "dtype": self.dtype, "condition": self.condition, "forward": self.forward,
                "backward": self.backward}


@dataclass(frozen=True)
class KernelReport:
    op: str
    signature: str
    candidate: str
    cases: tuple[CaseResult, ...]
    pattern: str | None = None
    timing: dict[str, Any] | None = None
    settings: dict[str, Any] = field(default_factory=dict)

    def __bool__(self) -> bool:
        return all(self.cases)

    def __repr__(self) -> str:
        return f"<KernelReport {self.op} {sum(map(bool, self.cases))}/{len(self.cases)} cases passed>"

    @property
    def broken_autograd(self) -> bool:
        return any(case.broken_autograd for case in self.cases)

    @property
    def verdict(self) -> str:
        if self.broken_autograd:
            return BROKEN_AUTOGRAD
        return PASSED if self else FAILED

    def to_dict(self) -> dict[str, Any]:
        data = {"op": self.op, "signature": self.signature, "candidate": self.candidate, "verdict": self.verdict,
                "passed_cases": sum(map(bool, self.cases)), "total_cases": len(self.cases), "pattern": self.pattern,
                "settings": self.settings, "cases": [case.to_dict() for case in self.cases]}
        if self.timing is not None:
            data["timing"] = self.timing
        return data
