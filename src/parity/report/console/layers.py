"""The console report of a layer-by-layer comparison: a per-layer grid, the verdict, and the first
divergence in numbers.

Readable at 100 columns: one row per layer, one narrow column per checkpoint kind
present in either trace, one symbol per cell.
"""

from __future__ import annotations

import math

from parity.core.errors import require
from parity.core.names import AFTER_LAYERS, BEFORE_LAYERS, LAYER_KINDS, is_raw, parse, weight_of
from parity.core.results import FAIL, NOT_ASKED, NOT_COMPARABLE, PASS, CheckpointResult, Comparison
from parity.report import terminal
from parity.report.raw import raw_line
from parity.report.registry import register

# kind -> column header; the legend under the grid spells them out.
SHORT_NAMES = {
    "attn_norm": "an", "q": "q", "k": "k", "v": "v", "q_norm": "qn", "k_norm": "kn", "v_norm": "vn",
    "q_rope": "qr", "k_rope": "kr", "attn_probs": "pr", "attn_ctx": "ctx", "attn_out": "ao",
    "resid_mid": "rm", "mlp_norm": "mn", "mlp_gate": "g", "mlp_up": "u", "mlp_fc": "fc",
    "mlp_act": "act", "mlp_out": "mo", "out": "out",
    "qkv": "qkv", "attn_post_norm": "apn", "moe_router_logits": "rl", "moe_experts": "ex", "moe_weights": "rw",
    "mlp_gate_up": "gu", "moe_routed": "rt", "moe_shared": "sh", "mlp_post_norm": "mpn",
}
CELLS = {  # status -> (symbol, style)
    PASS: ("✓", "green"),
    FAIL: ("✗", "bold red"),
    NOT_COMPARABLE: ("~", "yellow"),
    None: ("·", "dim"),  # held by one trace only, or by neither
}
NONFINITE_CELL = ("!", "bold magenta")


def renderables(comparison: Comparison) -> list:
    require("rich", extra="cli", purpose="the console report")
    from rich.text import Text

    parts = [_header(comparison), _grid(comparison), _globals_line(comparison), _legend(comparison)]
    parts += [_beyond_one_pass(comparison), _not_checked(comparison), _verdict(comparison)]
    if comparison.first_divergence is not None:
        parts.append(_divergence_details(comparison))
    parts += [Text(f"note: {note}", style="yellow") for note in comparison.notes]
    parts += [
        Text.assemble(("diagnosis ", "bold"), (f"{d.cause}", "bold cyan"), f" at {d.checkpoint}: {d.message}")
        for d in comparison.diagnoses
    ]
    if comparison.missing or comparison.extra:
        parts.append(_missing_and_extra(comparison))
    parts.append(raw_line(comparison))
    return [part for part in parts if part is not None]


@register(Comparison, "console")
def render(comparison: Comparison, *, width: int = 100, color: bool = False) -> str:
    return terminal.render(renderables(comparison), width=width, color=color)


def _describe(metadata: dict) -> str:
    what = metadata.get("producer") or "unknown producer"
    details = [metadata[key] for key in ("arch", "dtype", "compiled") if metadata.get(key)]
    return what + (f" ({', '.join(details)})" if details else "")


def _header(comparison: Comparison):
    from rich.text import Text

    tokens = comparison.reference_metadata.get("tokens")
    count = f", {len(tokens)} tokens" if tokens else ""
    header = Text.assemble(
        ("reference ", "bold"), _describe(comparison.reference_metadata), count, "\n",
        ("candidate ", "bold"), _describe(comparison.candidate_metadata),
    )
    if comparison.calibrated:
        basis = comparison.calibration_basis or ""
        header.append(f"\ntolerances: {basis.removeprefix('calibrated: ')}, measured by running the reference "
                      "at the candidate's precision", style="dim")
    return header


def _cell(result: CheckpointResult | None) -> tuple[str, str]:
    if result is None:
        return CELLS[None]
    metrics = result.metrics
    if result.status == FAIL and metrics and (metrics.nan_candidate or metrics.inf_candidate):
        return NONFINITE_CELL
    return CELLS[result.status]


def _layer_table(comparison: Comparison) -> tuple[list[str], dict[int, dict[str, CheckpointResult | None]]]:
    """Kinds present (as columns) and, per layer, each kind's result (None when one trace lacks it)."""
    kinds, layers = set(), {}
    for name in [r.name for r in comparison.checkpoints] + list(comparison.missing) + list(comparison.extra):
        checkpoint = parse(name)
        if checkpoint is not None and checkpoint.layer is not None:
            kinds.add(checkpoint.kind)
            layers.setdefault(checkpoint.layer, {})[checkpoint.kind] = None
    for result in comparison.checkpoints:
        checkpoint = parse(result.name)
        if checkpoint is not None and checkpoint.layer is not None:
            layers[checkpoint.layer][checkpoint.kind] = result
    return [kind for kind in LAYER_KINDS if kind in kinds], layers


def _grid(comparison: Comparison):
    from rich import box
    from rich.table import Table
    from rich.text import Text

    kinds, layers = _layer_table(comparison)
    if not layers:
        return None
    table = Table(box=box.SIMPLE_HEAD, padding=(0, 1), pad_edge=False, show_edge=False, collapse_padding=True)
    table.add_column("layer", justify="right", style="bold")
    for kind in kinds:
        table.add_column(SHORT_NAMES[kind], justify="center", no_wrap=True)
    replayed = bool(comparison.block_local_rel_l2)
    table.add_column("local/propagated" if replayed else "err/noise" if comparison.calibrated else "max rel_l2",
                     justify="right")
    for layer in sorted(layers):
        row = layers[layer]
        cells = [Text(*_cell(row.get(kind))) if kind in row else Text(" ") for kind in kinds]
        results = [result for result in row.values() if result is not None]
        if replayed:
            last = _local_and_propagated(layer, row, comparison)
        else:
            last = _worst_noise_ratio(results) if comparison.calibrated else _worst_rel_l2(results)
        table.add_row(str(layer), *cells, last)
    return table


def _local_and_propagated(layer: int, row: dict, comparison: Comparison) -> str:
    """The block output's own error (replayed on the reference's input) and its error in the normal run."""
    local = comparison.block_local_rel_l2.get(layer)
    out = row.get("out")
    propagated = out.metrics.rel_l2 if out is not None and out.metrics is not None else None
    return "/".join("-" if value is None else f"{value:.0e}" for value in (local, propagated))


def _worst_noise_ratio(results) -> str:
    """The largest rel_l2 / noise floor of a layer's checkpoints."""
    ratios = [r.noise_ratio for r in results if r.noise_ratio is not None]
    if not ratios:
        return "-"
    worst = max(ratios)
    return f"{worst:.2g}x" if math.isfinite(worst) else "inf"


def _worst_rel_l2(results) -> str:
    values = [r.metrics.rel_l2 for r in results if r.metrics is not None]
    if not values:
        return "-"
    worst = max(values, key=lambda v: math.inf if math.isnan(v) else v)
    return f"{worst:.1e}" if math.isfinite(worst) else "inf"


def _globals_line(comparison: Comparison):
    from rich.text import Text

    line = Text()
    for name in BEFORE_LAYERS + AFTER_LAYERS:
        result = comparison.result(name)
        if result is None and name not in comparison.missing and name not in comparison.extra:
            continue
        symbol, style = _cell(result)
        metrics = result.metrics if result is not None else None
        rel = f" {metrics.rel_l2:.1e}" if metrics is not None and math.isfinite(metrics.rel_l2) else ""
        line.append(f"{name} ", style="bold").append(symbol, style=style).append(f"{rel}   ")
    return line if line.plain else None


def _legend(comparison: Comparison):
    from rich.text import Text

    kinds, _ = _layer_table(comparison)
    if not kinds:
        return None
    names = "  ".join(f"{SHORT_NAMES[kind]}={kind}" for kind in kinds if SHORT_NAMES[kind] != kind)
    return Text(f"✓ within tolerance  ✗ outside  ! non-finite  ~ not comparable  · absent\n{names}", style="dim")


def _beyond_one_pass(comparison: Comparison):
    """One line for token-by-token decoding, one for the short greedy run."""
    from rich.text import Text

    lines = Text()
    decode = comparison.decode
    if decode is not None:
        if decode.first_step is None:
            lines.append(f"decode: token-by-token logits after a {decode.prompt_length}-token prefill match the full "
                         f"pass at {len(decode.rel_l2)}/{len(decode.rel_l2)} steps (largest rel_l2 "
                         f"{max(decode.rel_l2):.2g}; bound: {decode.basis})\n")
        else:
            where = f"; inside the step, first at {decode.first_checkpoint}" if decode.first_checkpoint else ""
            lines.append(f"decode: parts from the full pass at step {decode.first_step} (position {decode.position}): "
                         f"rel_l2 {decode.rel_l2[decode.first_step]:.3g} > {decode.bounds[decode.first_step]:.3g}"
                         f"{where}\n", style="bold red")
        if decode.cache is not None:
            lines.append(f"KV cache: {decode.cache.verdict}\n", style=None if decode.cache else "bold red")
        variants = ([("chunked prefill", decode.chunked_rel_l2)] if decode.chunked_rel_l2 is not None else []) + \
            [(f"batched with {side} padding{decode.batch_label}", error) for side, error in decode.batch_rel_l2]
        if variants:
            bound = max(decode.bounds)
            lines.append("prefill variants: " + ", ".join(
                f"{label} {'matches' if error <= bound else 'differs'} (rel_l2 {error:.2g})" for label, error in variants)
                + "\n", style=None if all(error <= bound for _, error in variants) else "bold red")
    generation = comparison.generation
    if generation is not None:
        divergence = generation.divergence
        if divergence is None:
            lines.append(f"greedy: the same {len(generation.reference_tokens)} tokens\n")
        else:
            kind = "a near tie" if divergence.near_tie else "not a near tie"
            lines.append(f"greedy: first different token at step {divergence.step} "
                         f"(reference margin {divergence.margin_nats:.3f} nats: {kind})\n",
                         style=None if divergence.near_tie else "bold red")
    lines.rstrip()
    return lines if lines.plain else None


CHECK_LABELS = {"kv_cache": "KV cache", "chunked_prefill": "chunked prefill", "padding": "padded batches"}


def _not_checked(comparison: Comparison):
    """One line per reason: the checks that could not run."""
    from rich.text import Text

    by_reason: dict[str, list[str]] = {}
    for item in comparison.not_checked:
        reason = NOT_ASKED if item.reason.startswith(NOT_ASKED) else item.reason   # opt-ins: one line
        by_reason.setdefault(reason, []).append(CHECK_LABELS.get(item.check, item.check))
    lines = [f"not checked: {', '.join(checks)}: {reason}" for reason, checks in by_reason.items()]
    return Text("\n".join(lines), style="yellow") if lines else None


def _verdict(comparison: Comparison):
    from rich.text import Text

    canonical = [result for result in comparison.checkpoints if not is_raw(result.name)]  # raw: their own line
    total, passed = len(canonical), sum(result.status == PASS for result in canonical)
    failed = sum(result.failed for result in canonical)
    if comparison.passed or comparison.first_divergence is None:
        if not comparison.passed:
            return Text.assemble(("FAIL", "bold red"), "  every checkpoint within tolerance, but decoding parts (above)")
        skipped = total - passed
        tail = f" ({skipped} not comparable)" if skipped else ""
        return Text.assemble(("PASS", "bold green"),
                             f"  {passed}/{total} checkpoints within tolerance{tail}{comparison.scope}")
    divergence = comparison.first_divergence
    unit = "row" if weight_of(divergence.checkpoint) else "token"  # a weight's first axis is its output rows
    position = f", worst at {unit} {divergence.position}" if divergence.position is not None else ""
    what = (f"  {failed}/{total} checkpoints outside tolerance; first divergence at " if failed else
            "  every checkpoint within tolerance, but raw module outputs are not; first at ")
    verdict = Text.assemble(("FAIL", "bold red"), what, (divergence.checkpoint, "bold"), position, comparison.scope)
    origin = comparison.origin
    if origin is not None and origin.checkpoint != divergence.checkpoint:
        attribution = comparison.attributions.get(origin.checkpoint)
        verdict.append("\nthe error is introduced at ")
        verdict.append(origin.checkpoint, style="bold")
        if attribution is not None:
            verdict.append(f": it adds rel_l2 {attribution.introduced_rel_l2:.3g} to the "
                           f"{attribution.inherited_rel_l2:.3g} its inputs carried")
    return verdict


def _divergence_details(comparison: Comparison):
    from rich.text import Text

    result = comparison.result(comparison.first_divergence.checkpoint)
    lines = list(result.explanation)
    metrics = result.metrics
    if metrics is not None:
        lines.append(f"rel_l2 {metrics.rel_l2:.3g}   cosine {metrics.cosine:.6f}   mean_abs {metrics.mean_abs:.3g}")
        if metrics.nan_candidate or metrics.inf_candidate or metrics.nan_reference or metrics.inf_reference:
            lines.append(
                f"non-finite: candidate {metrics.nan_candidate} NaN, {metrics.inf_candidate} Inf; "
                f"reference {metrics.nan_reference} NaN, {metrics.inf_reference} Inf"
            )
    if result.layout:
        lines.append(f"layout: {result.layout}")
    attribution = comparison.attributions.get(result.name)
    if attribution is not None and attribution.inputs:
        lines.append(f"introduced here: rel_l2 {attribution.introduced_rel_l2:.3g}; inherited from "
                     f"{', '.join(attribution.inputs)}: {attribution.inherited_rel_l2:.3g}")
    divergence = comparison.first_divergence
    if divergence.onset is not None:
        over = sum(1 for value in divergence.per_position[divergence.onset:]
                   if not value <= result.tolerance.position_bound(result.metrics))
        lines.append(f"begins at token position {divergence.onset}: the first over its bound "
                     f"({over} of {len(divergence.per_position)} positions are; the worst is {divergence.position})")
    if divergence.per_position:
        lines.append("rel_l2 by token position: " + _profile(divergence.per_position, start=_window(divergence)))
    if divergence.per_head:
        lines.append("rel_l2 by head: " + _profile(divergence.per_head))
    return Text("\n".join("  " + line for line in lines))


def _profile(values: tuple[float, ...], limit: int = 12, start: int = 0) -> str:
    """`limit` values from `start` (a long sequence is shown around where its error begins)."""
    start = max(0, min(start, len(values) - limit))
    shown = "  ".join(f"{i}:{v:.2g}" for i, v in enumerate(values[start:start + limit], start))
    before = "... " if start else ""
    return before + shown + (f"  ... ({len(values)} in all)" if len(values) > start + limit else "")


def _window(divergence) -> int:
    """Where a long profile is shown from: a few positions before the error begins."""
    return 0 if divergence.onset is None else max(0, divergence.onset - 3)


def _missing_and_extra(comparison: Comparison):
    from rich.text import Text

    def listing(names: tuple[str, ...]) -> str:
        shown = ", ".join(names[:8])
        return shown + (f", ... ({len(names)} in all)" if len(names) > 8 else "")

    lines = []
    if comparison.missing:
        lines.append(f"only in reference: {listing(comparison.missing)}")
    if comparison.extra:
        lines.append(f"only in candidate: {listing(comparison.extra)}")
    return Text("\n".join(lines), style="dim")
