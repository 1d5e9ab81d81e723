"""What `parity check --gradients` found: each checkpoint's and parameter's gradient against the reference's,
in backward order, and the trainable parameters no gradient reaches."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class GradientResult:
    name: str
    rel_l2: float
    bound: float
    passed: bool

    def __bool__(self) -> bool:
        return self.passed

    def __repr__(self) -> str:
        return f"<GradientResult {self.name} rel_l2 {self.rel_l2:.3g} {'ok' if self.passed else 'FAIL'}>"


@dataclass(frozen=True)
class GradientComparison:
    loss_reference: float
    loss_candidate: float
    checkpoints: tuple[GradientResult, ...]        # backward order
    parameters: tuple[GradientResult, ...]
    without_gradient: tuple[str, ...]
    missing: tuple[str, ...] = field(default=())   # recorded on one side only
    trainable: int = 0                             # the candidate's trainable parameters

    def __bool__(self) -> bool:
        return not self.without_gradient and all(self.checkpoints) and all(self.parameters)

    def __repr__(self) -> str:
        first = self.first_divergence
        return f"<GradientComparison {'pass' if self else 'FAIL'}{f', first divergence at {first.name}' if first is not None else ''}>"

    @property
    def first_divergence(self) -> GradientResult | None:
        return next((result for result in self.checkpoints if not result.passed), None)

    def to_dict(self) -> dict:
        first = self.first_divergence
        return {"verdict": "pass" if self else "fail", "loss_reference": self.loss_reference,
                "loss_candidate": self.loss_candidate, "first_divergence": first.name if first is not None else None,
                "without_gradient": list(self.without_gradient), "missing": list(self.missing),
                "trainable_parameters": self.trainable,
                "checkpoints": [result.__dict__ for result in self.checkpoints],
                "parameters": [result.__dict__ for result in self.parameters]}
