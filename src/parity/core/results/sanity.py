"""What `parity sanity` found: one result per component test, and the run's summary.

The JSON follows the course script's shape: `timestamp`, `summary`,
`environment`, `test_config`, `results` (one entry per test, in order).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

PASSED, FAILED, SKIPPED = "passed", "failed", "skipped"


@dataclass(frozen=True)
class TestResult:
    """One test: its status, a one-line message, and the numbers behind it."""

    name: str
    status: str
    message: str
    metrics: dict[str, Any] = field(default_factory=dict)

    __test__ = False  # not a pytest test class

    def __bool__(self) -> bool:
        return self.status == PASSED

    def __repr__(self) -> str:
        return f"<TestResult {self.name} {self.status}: {self.message}>"

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "status": self.status, "message": self.message, "metrics": self.metrics}


@dataclass(frozen=True)
class SanityReport:
    """All tests of one run. Passed when no test failed and one passed at least; a test that could not run
    (a port without a module transformers has) is named as not checked, and under --strict fails the run."""

    results: tuple[TestResult, ...]
    timestamp: str
    environment: dict[str, Any]
    test_config: dict[str, Any]

    def __bool__(self) -> bool:
        if self.test_config.get("strict") and self.count(SKIPPED):
            return False
        return not self.count(FAILED) and self.count(PASSED) > 0

    def __repr__(self) -> str:
        return f"<SanityReport {self.count(PASSED)}/{len(self.results)} passed>"

    def count(self, status: str) -> int:
        return sum(result.status == status for result in self.results)

    @property
    def summary(self) -> dict[str, Any]:
        total = len(self.results)
        return {"total_tests": total, "passed": self.count(PASSED), "failed": self.count(FAILED),
                "skipped": self.count(SKIPPED),
                "success_rate": f"{100.0 * self.count(PASSED) / total:.1f}%" if total else "0.0%",
                "overall_status": "PASSED" if self else "FAILED"}

    def to_dict(self) -> dict[str, Any]:
        return {"timestamp": self.timestamp, "summary": self.summary, "environment": self.environment,
                "test_config": self.test_config, "results": [result.to_dict() for result in self.results]}
