"""The raw.<module> outputs of a comparison, reported apart from the canonical checkpoints.

A module with no canonical role is still captured from transformers models; two
implementations of the same classes compare there module by module. Ports rarely
have them, so what only one side holds is counted, not listed as missing.
"""

from __future__ import annotations

from parity.core.compare import IDS_DIFFER
from parity.core.names import is_raw
from parity.core.results import NOT_COMPARABLE, Comparison


def raw_summary(comparison: Comparison) -> dict:
    results = [result for result in comparison.checkpoints if is_raw(result.name)]
    return {
        "compared": sum(result.status != NOT_COMPARABLE for result in results),
        "failed": [result.name for result in results if result.failed],
        "unpaired": len(comparison.raw_unpaired),
        # modules that ran with other shapes on the two sides (a loop, another implementation), or whose integer
        # ids (a selection) differ
        "not_comparable": [result.name for result in results if result.status == NOT_COMPARABLE],
    }


def raw_line(comparison: Comparison):
    """One dim line, or None when neither trace has raw module outputs."""
    from rich.text import Text

    summary = raw_summary(comparison)
    if not summary["compared"] and not summary["unpaired"] and not summary["not_comparable"]:
        return None
    failed = summary["failed"]
    text = f"raw modules (no canonical role): {summary['compared']} compared, {len(failed)} failed"
    if failed:
        text += " (" + ", ".join(failed[:4]) + (f", ... {len(failed)} in all" if len(failed) > 4 else "") + ")"
    if summary["unpaired"]:
        text += f"; {summary['unpaired']} held by one trace only, not compared"
    selections = [result.name for result in comparison.checkpoints if result.name in summary["not_comparable"]
                  and (result.reason or "").startswith(IDS_DIFFER)]
    if len(summary["not_comparable"]) > len(selections):
        text += (f"; {len(summary['not_comparable']) - len(selections)} ran with other shapes on the two sides, "
                 "not compared")
    if selections:
        text += (f"; {len(selections)} chose other integer ids ({', '.join(selections[:2])}"
                 f"{', ...' if len(selections) > 2 else ''}): a selection, judged by the checkpoints that read it")
    return Text(text, style="bold red" if failed else "dim")
