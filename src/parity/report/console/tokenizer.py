"""Console report of a tokenizer comparison: each text agrees or shows an aligned diff with each token's text."""

from __future__ import annotations

from parity.core.results import TokenDifference, TokenizerComparison
from parity.core.tokenization import describe
from parity.report import terminal
from parity.report.registry import register

MAX_SHOWN = 6  # tokens of a run shown before "..."


def renderables(comparison: TokenizerComparison) -> list:
    from rich.text import Text

    parts = [Text.assemble(("reference ", "bold"), comparison.reference, "\n", ("candidate ", "bold"), comparison.candidate)]
    for text in comparison.texts:
        symbol, style = ("✓", "green") if text else ("✗", "bold red")
        line = Text.assemble((f"{symbol} ", style), (f"{text.name:<24}", "bold"),
                             f"reference {len(text.reference_ids)} tokens, candidate {len(text.candidate_ids)}")
        parts.append(line)
        for difference in text.differences:
            parts.append(_difference(difference))
    agreeing = sum(map(bool, comparison.texts))
    if comparison:
        parts.append(Text.assemble(("PASS", "bold green"), f"  {agreeing}/{len(comparison.texts)} texts tokenize identically"))
    else:
        patterns = ", ".join(f"{pattern} x{count}" for pattern, count in comparison.patterns.items())
        parts.append(Text.assemble(("FAIL", "bold red"), f"  {len(comparison.texts) - agreeing}/{len(comparison.texts)} "
                                   f"texts tokenize differently: {patterns}"))
    return parts


def _run(run) -> str:
    shown = "  ".join(f"{token} {text!r}" for token, text in run[:MAX_SHOWN])
    return (shown + f"  ... ({len(run)} tokens)" if len(run) > MAX_SHOWN else shown) or "(nothing)"


def _difference(difference: TokenDifference):
    from rich.text import Text

    return Text(
        f"    at token {difference.reference_start}: reference  {_run(difference.reference)}\n"
        f"    {' ' * len(str(difference.reference_start))}           candidate  {_run(difference.candidate)}\n"
        f"    {difference.pattern}: {describe(difference.pattern)}"
    )


@register(TokenizerComparison, "console")
def render(comparison: TokenizerComparison, *, width: int = 100, color: bool = False) -> str:
    return terminal.render(renderables(comparison), width=width, color=color)
