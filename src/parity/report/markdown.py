"""The Markdown summary: a few lines for a CI step summary ($GITHUB_STEP_SUMMARY) or a pull-request comment.

The verdict, the first divergence in numbers, the diagnoses, the decode and
greedy lines, and the failing checkpoints folded in a <details> block. Hosts
render HTML inside Markdown, so every piece of text is stripped of control
characters, HTML-escaped, and has Markdown's own punctuation escaped.
"""

from __future__ import annotations

import html
import re
from pathlib import Path

from parity.core.results import Comparison, GenerationComparison, SequenceComparison, TokenizerComparison
from parity.report import registry
from parity.report.text import number, printable

MAX_ROWS = 25   # failing checkpoints listed before "... and N more"
# Inline markup only: the text never starts a line (it follows "- " or "| "), so block markers can stay.
_MARKDOWN_PUNCTUATION = re.compile(r"([\\`*_\[\]|~])")
_MENTION = re.compile(r"(?<![\w`])@([A-Za-z0-9][A-Za-z0-9-]*(?:/[A-Za-z0-9.-]+)?)")


def text(value: object, *, limit: int | None = 300) -> str:
    """Plain text that renders as itself: no HTML, no emphasis, no table breaks, on one line."""
    flat = " ".join(printable(value, limit=limit).split())
    escaped = _MARKDOWN_PUNCTUATION.sub(r"\\\1", html.escape(flat, quote=False))
    return _MENTION.sub(r"`@\1`", escaped)   # in a code span: no one is notified by a report in a PR comment


def code(value: object) -> str:
    """A name in a code span (backticks and pipes cannot close it or break a table)."""
    flat = " ".join(printable(value, limit=200).split()).replace("`", "'").replace("|", "\\|")
    return f"`{flat}`"


def render(result) -> str:
    """The summary of any result parity produces."""
    return registry.render(result, "markdown")


def write(result, path: str | Path, *, overwrite: bool = False) -> Path | None:
    return registry.write(result, "markdown", path, overwrite=overwrite)


def _lines(lines: list[str]) -> str:
    return "\n".join(lines).rstrip() + "\n"


@registry.register(Comparison, "markdown")
def _comparison_summary(comparison: Comparison) -> str:
    return _lines(_comparison(comparison))


@registry.register(GenerationComparison, "markdown")
def _generation_summary(generation: GenerationComparison) -> str:
    return _lines(_heading(bool(generation), "generation") + [f"- {line}" for line in _generation_lines(generation)])


@registry.register(SequenceComparison, "markdown")
def _sequence_summary(comparison: SequenceComparison) -> str:
    return _lines(_sequence(comparison))


@registry.register(TokenizerComparison, "markdown")
def _tokenizer_summary(comparison: TokenizerComparison) -> str:
    return _lines(_tokenizer(comparison))


def _heading(passed: bool, what: str) -> list[str]:
    return [f"### {'✅ parity PASS' if passed else '❌ parity FAIL'}: {text(what)}", ""]


def _describe(metadata: dict) -> str:
    details = [str(metadata[key]) for key in ("arch", "dtype", "compiled") if metadata.get(key)]
    return str(metadata.get("producer") or "unknown producer") + (f" ({', '.join(details)})" if details else "")


def _comparison(comparison: Comparison) -> list[str]:
    total = len(comparison.checkpoints)
    divergence = comparison.first_divergence
    if divergence is None:
        what = f"{comparison.passed_count}/{total} checkpoints within tolerance{comparison.scope}"
    else:
        what = f"{comparison.failed_count}/{total} checkpoints outside tolerance{comparison.scope}"
    lines = _heading(comparison.passed, what) + [
        "| | |", "|---|---|",
        f"| reference | {text(_describe(comparison.reference_metadata))} |",
        f"| candidate | {text(_describe(comparison.candidate_metadata))} |",
    ]
    bases = comparison.tolerance_bases
    if bases:
        lines.append(f"| tolerances | {text(bases[0])}{' (and others)' if len(bases) > 1 else ''} |")
    if divergence is not None:
        position = f", worst at token {divergence.position}" if divergence.position is not None else ""
        lines.append(f"| first divergence | {code(divergence.checkpoint)}{text(position)}: "
                     f"{text(_numbers(comparison.result(divergence.checkpoint)), limit=600)} |")
    origin = comparison.origin
    if origin is not None and (divergence is None or origin.checkpoint != divergence.checkpoint):
        lines.append(f"| error introduced at | {code(origin.checkpoint)} |")
    if comparison.missing or comparison.extra:
        lines.append(f"| not compared | {len(comparison.missing)} only in the reference, "
                     f"{len(comparison.extra)} only in the candidate |")
    lines.append("")
    lines += [f"- **{text(d.cause)}** at {code(d.checkpoint)}: {text(d.message, limit=600)}" for d in comparison.diagnoses]
    lines += [f"- decode: {text(line)}" for line in _decode_lines(comparison.decode)]
    if comparison.generation is not None:
        lines += [f"- {line}" for line in _generation_lines(comparison.generation)]
    lines += [f"- note: {text(note)}" for note in comparison.notes]
    return lines + [""] + _failing_table(comparison)


def _numbers(result) -> str:
    """The explanation on one line, and the cosine."""
    if result is None or not result.explanation:
        return "not compared"
    cosine = [f"cosine {number(result.metrics.cosine, 6)}"] if result.metrics is not None else []
    return "; ".join([*result.explanation, *cosine])


def _failing_table(comparison: Comparison) -> list[str]:
    failing = [result for result in comparison.checkpoints if result.failed]
    if not failing:
        return []
    lines = [f"<details><summary>Failing checkpoints ({len(failing)})</summary>", "",
             "| checkpoint | rel_l2 | noise floor | bound | cosine |", "|---|---:|---:|---:|---:|"]
    for result in failing[:MAX_ROWS]:
        metrics, tolerance = result.metrics, result.tolerance
        lines.append(f"| {code(result.name)} | {number(metrics.rel_l2) if metrics else '-'} | "
                     f"{number(tolerance.noise_rel_l2) if tolerance else '-'} | "
                     f"{number(tolerance.max_rel_l2) if tolerance else '-'} | "
                     f"{number(metrics.cosine, 6) if metrics else '-'} |")
    if len(failing) > MAX_ROWS:
        lines.append(f"| ... and {len(failing) - MAX_ROWS} more | | | | |")
    return lines + ["", "</details>"]


def _decode_lines(decode) -> list[str]:
    if decode is None:
        return []
    steps = len(decode.rel_l2)
    if decode.first_step is None:
        lines = [f"token-by-token logits match the full pass at {steps}/{steps} steps (bound: {decode.basis})"]
    else:
        lines = [f"parts from the full pass at step {decode.first_step} (position {decode.position}): rel_l2 "
                 f"{number(decode.rel_l2[decode.first_step])} > {number(decode.bounds[decode.first_step])}"
                 + (f", first at {decode.first_checkpoint}" if decode.first_checkpoint else "")]
    if decode.cache is not None and (decode.cache.first is not None or decode.cache.inherited):
        lines.append(f"the KV cache {decode.cache.verdict}")
    return lines


def _generation_lines(generation) -> list[str]:
    divergence, forced = generation.divergence, generation.teacher_forced
    if divergence is None:
        greedy = f"greedy: the same {len(generation.reference_tokens)} tokens"
    else:
        kind = "a near tie" if divergence.near_tie else "not a near tie"
        greedy = (f"greedy: first different token at step {divergence.step} (reference margin "
                  f"{number(divergence.margin_nats)} nats, near ties under {divergence.tie_rule}: {kind})")
    lines = [text(greedy), text(f"teacher-forced: mean KL {number(forced.mean_kl, 4)} nats, top-1 agrees "
                                f"{sum(forced.top1)}/{len(forced.top1)}")]
    if forced.kl_bound is not None:
        over = forced.over_bound
        lines.append(text(f"KL bound {number(forced.kl_bound)} nats ({forced.kl_basis}): "
                          + (f"over it at positions {over}" if over else "within it at every position")))
    sampler = generation.sampler
    if sampler is not None:
        lines.append(text("sampler: matches the reference sampler" if sampler.first_step is None else
                          f"sampler: differs from the reference sampler from step {sampler.first_step}"))
    return lines


def _sequence(comparison) -> list[str]:
    first = comparison.first_divergence
    lines = _heading(bool(comparison), comparison.headline)
    if first is not None:
        lines.append(f"- first divergence at token {first.index} ({code(repr(first.piece))}): the reference's top-1 is "
                     f"{code(repr(first.reference_top[0][0]))}, {number(first.gap_nats)} nats above it")
    if comparison.mean_kl is not None:
        lines.append(f"- mean KL over the top-k: {number(comparison.mean_kl, 4)}")
    lines += [f"- **{text(d.cause)}**: {text(d.message, limit=600)}" for d in comparison.diagnoses]
    return lines + [f"- note: {text(note)}" for note in comparison.notes]


def _tokenizer(comparison) -> list[str]:
    agreeing = sum(map(bool, comparison.texts))
    lines = _heading(bool(comparison), f"{agreeing}/{len(comparison.texts)} texts tokenize identically")
    lines += [f"- {code(t.name)}: " + ", ".join(text(d.pattern) for d in t.differences)
              for t in comparison.texts if not t]
    return lines
