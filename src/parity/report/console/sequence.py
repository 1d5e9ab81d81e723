"""Console report of a token-level comparison (a black-box candidate's log-probabilities)."""

from __future__ import annotations

from parity.core.results import PositionResult, SequenceComparison
from parity.report import terminal
from parity.report.registry import register


def renderables(comparison: SequenceComparison) -> list:
    from rich import box
    from rich.table import Table
    from rich.text import Text

    table = Table(box=box.SIMPLE_HEAD, padding=(0, 1), pad_edge=False, show_edge=False)
    for column, justify in [("#", "right"), ("token", "left"), ("", "left"), ("ref top-1", "left"),
                            ("cand top-1", "left"), ("p_ref(token)", "right"), ("margin", "right"), ("KL top-k", "right")]:
        table.add_column(column, justify=justify, no_wrap=True)
    for position in comparison.positions:
        table.add_row(*_row(position))
    parts = [table, _summary(comparison)]
    if comparison.first_divergence is not None:
        parts.append(_divergence(comparison.first_divergence))
    parts += [Text.assemble(("diagnosis ", "bold"), (d.cause, "bold cyan"), f": {d.message}") for d in comparison.diagnoses]
    parts += [Text(f"note: {note}", style="yellow") for note in comparison.notes]
    return parts


def _row(position: PositionResult) -> list:
    from rich.text import Text

    symbol, style = ("✓", "green") if position.agrees else (("≈", "yellow") if position.near_tie else ("✗", "bold red"))
    return [
        str(position.index),
        repr(position.piece)[:14],
        Text(symbol + (" gen" if position.generated else ""), style=style),
        repr(position.reference_top[0][0])[:14],
        repr(position.candidate_top1)[:14] if position.candidate_top1 is not None else "-",
        f"{position.reference_prob_of_piece:.3f}",
        f"{position.margin_nats:.2f}",
        f"{position.kl_topk:.4f}" if position.kl_topk is not None else "-",
    ]


def _summary(comparison: SequenceComparison):
    from rich.text import Text

    verdict = ("PASS", "bold green") if comparison else ("FAIL", "bold red")
    return Text.assemble(verdict, f"  {comparison.headline}")


def _divergence(position: PositionResult):
    from rich.text import Text

    top = ", ".join(f"{piece!r} {probability:.3f}" for piece, probability in position.reference_top)
    what = "generated" if position.generated else "predicted"
    sampled = (f"; the candidate's own top-1 there was {position.candidate_top1!r}: its sampler chose"
               if position.generated and position.candidate_top1 not in (None, position.piece) else "")
    return Text(
        f"  first divergence at token {position.index} (offset {position.offset}): the candidate {what} "
        f"{(position.piece if position.generated else position.candidate_top1)!r}; the reference's top-k: {top} "
        f"({position.gap_nats:.2f} nats below the reference's top-1, not a near tie){sampled}"
    )


@register(SequenceComparison, "console")
def render(comparison: SequenceComparison, *, width: int = 100, color: bool = False) -> str:
    return terminal.render(renderables(comparison), width=width, color=color)
