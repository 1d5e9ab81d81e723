"""`parity bench` on the console: both sides' speed and memory, and their ratio. Plain text."""

from __future__ import annotations

from parity.core.results import BenchReport
from parity.report.registry import register


@register(BenchReport, "console")
def render(report: BenchReport, **_layout) -> str:
    """Not laid out to a width."""
    options = report.options
    rows = [f"reference: {report.reference['spec']}: {report.reference['description']}",
            f"candidate: {report.candidate['spec']}: {report.candidate['description']}",
            f"prefill {options['prompt_tokens']} tokens in one batch, then decode {options['decode_tokens']} one at a "
            f"time; median of {options['repeats']} after {options['warmup']} warm-up",
            f"{'':<11}{'prefill tok/s':>15}{'decode tok/s':>15}{'peak RSS MiB':>15}{'RSS of load MiB':>17}"]
    for side in ("reference", "candidate"):
        result = getattr(report, side)
        load = result["rss_after_load_mib"] - result["rss_before_load_mib"]
        rows.append(f"{side:<11}{result['prefill_tokens_per_s']:>15.1f}{_number(result['decode_tokens_per_s']):>15}"
                    f"{result['peak_rss_mib']:>15.0f}{load:>17.0f}")
    rows.append(f"{'cand/ref':<11}{_ratio(report.ratio('prefill_tokens_per_s')):>15}"
                f"{_ratio(report.ratio('decode_tokens_per_s')):>15}")
    for side in ("reference", "candidate"):
        note = getattr(report, side).get("decode_note")
        if note:
            rows.append(f"{side} decode {note}")
    return "\n".join(rows) + "\n"


def _number(value) -> str:
    return "-" if value is None else f"{value:.1f}"


def _ratio(value) -> str:
    return "-" if value is None else f"{value:.2f}x"
