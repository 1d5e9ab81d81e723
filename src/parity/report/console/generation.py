"""Console report of a generation comparison: the two greedy continuations, the first divergence
with the reference's top-k and margin, teacher-forced KL and agreement, and the sampler."""

from __future__ import annotations

from parity.core.results import GenerationComparison
from parity.report import terminal
from parity.report.registry import register


def _piece(comparison: GenerationComparison, token: int) -> str:
    """A token's text, or <id> where there is none (a model without a tokenizer)."""
    pieces = comparison.pieces
    return pieces[token] if 0 <= token < len(pieces) else f"<{token}>"


def _text(comparison: GenerationComparison, tokens) -> str:
    return "".join(_piece(comparison, t) for t in tokens)


def renderables(comparison: GenerationComparison) -> list:
    from rich.text import Text

    parts = [
        Text.assemble(("prompt     ", "bold"), repr(_text(comparison, comparison.prompt))),
        Text.assemble(("reference  ", "bold"), repr(_text(comparison, comparison.reference_tokens))),
        Text.assemble(("candidate  ", "bold"), repr(_text(comparison, comparison.candidate_tokens))),
    ]
    divergence = comparison.divergence
    if divergence is None:
        parts.append(Text(f"greedy: the {len(comparison.reference_tokens)} tokens are the same"))
    else:
        top = ", ".join(f"{_piece(comparison, i)!r} {p:.3f}" for i, p in divergence.reference_top)
        kind = "a near tie, which noise can flip" if divergence.near_tie else "not a near tie: a real divergence"
        parts.append(Text(
            f"greedy: first different token at step {divergence.step}: reference {_piece(comparison, divergence.reference_token)!r}, "
            f"candidate {_piece(comparison, divergence.candidate_token)!r} (the reference's choice no. {divergence.candidate_rank + 1 if divergence.candidate_rank is not None else '?'})\n"
            f"  the reference's top-5 there: {top}\n"
            f"  margin between its top two: {divergence.margin_nats:.3f} nats, near ties under {divergence.tie_rule}: "
            f"{kind}"))
    forced = comparison.teacher_forced
    parts.append(Text(
        f"teacher-forced over the reference's {len(forced.kl)} tokens: mean KL {forced.mean_kl:.4g} nats "
        f"(max {max(forced.kl, default=0):.4g}), top-1 agrees {sum(forced.top1)}/{len(forced.top1)}, "
        f"within the reference's top 5 {sum(forced.top5)}/{len(forced.top5)}"
        + (f"; disagreements that are not near ties at positions {forced.real_disagreements}" if forced.real_disagreements else "")))
    if forced.kl_bound is not None:
        over = forced.over_bound
        parts.append(Text(
            f"  KL bound {forced.kl_bound:.3g} nats ({forced.kl_basis}): "
            + (f"over it at {len(over)} of {len(forced.kl)} positions, first at position {over[0]}: the "
               "candidate's distribution moves more than its precision's rounding does" if over else
               "within it at every position")))
    if comparison.sampler is not None:
        sampler = comparison.sampler
        if sampler:
            parts.append(Text(f"sampler: same distribution as the reference sampler at every step "
                              f"(largest total variation {max(sampler.total_variation, default=0):.2g})"))
        else:
            fitted = (f"; it samples as if at temperature {sampler.fitted_temperature:.3g}"
                      if sampler.fitted_temperature else "")
            parts.append(Text(f"sampler: differs from the reference sampler from step {sampler.first_step}: total "
                              f"variation {sampler.total_variation[sampler.first_step]:.3g}, KL "
                              f"{sampler.kl[sampler.first_step]:.3g}{fitted}", style="bold red"))
    verdict = ("PASS", "bold green") if comparison else ("FAIL", "bold red")
    parts.append(Text.assemble(verdict, "  generation"))
    return parts


@register(GenerationComparison, "console")
def render(comparison: GenerationComparison, *, width: int = 100, color: bool = False) -> str:
    return terminal.render(renderables(comparison), width=width, color=color)
