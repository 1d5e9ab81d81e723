"""The HTML page of a layer-by-layer comparison: verdict, first divergence, heatmap, error by depth,
diagnoses, decode and greedy, every checkpoint, both traces' metadata.

Reads the Comparison generically: checkpoint kinds and statuses are taken from
what the results hold (known kinds in data-flow order, others after them), so a
new kind or status shows up without a change here.
"""

from __future__ import annotations

import math

from parity.core.names import LAYER_KINDS, parse
from parity.core.results import FAIL, PASS, CheckpointResult, Comparison
from parity.report.html import svg
from parity.report.html.page import Page, document, metadata_section, paragraph, section, table
from parity.report.html.sequences import decode_section, greedy_section
from parity.report.registry import register
from parity.report.text import escape_html, number, printable

RATIO_SCALE = svg.LogScale(0.01, 1000.0)   # error over noise: 1 sits on green, 3 (the usual bound) on yellow
REL_L2_SCALE = svg.LogScale(1e-9, 1.0)     # uncalibrated comparisons: rel_l2 itself


@register(Comparison, "html")
def render(comparison: Comparison) -> str:
    return document(page(comparison))


def page(comparison: Comparison) -> Page:
    sections = [_summary(comparison)]
    if comparison.first_divergence is not None:
        sections.append(_divergence(comparison))
    sections += [_diagnoses(comparison), _heatmap(comparison), _depth(comparison)]
    if comparison.block_local_rel_l2:
        sections.append(_replay(comparison))
    if comparison.decode is not None:
        sections.append(decode_section(comparison.decode))
    if comparison.generation is not None:
        sections.append(greedy_section(comparison.generation))
    sections += [_checkpoints(comparison),
                 metadata_section(comparison.reference_metadata, comparison.candidate_metadata)]
    return Page(_title(comparison), comparison.passed, _headline(comparison), tuple(s for s in sections if s))


def _title(comparison: Comparison) -> str:
    divergence = comparison.first_divergence
    return f"first divergence at {divergence.checkpoint}" if divergence else f"{len(comparison.checkpoints)} checkpoints"


def _headline(comparison: Comparison) -> str:
    total = len(comparison.checkpoints)
    divergence = comparison.first_divergence
    if divergence is None:
        tail = "" if comparison.passed else "; decoding or generation parts (below)"
        return escape_html(f"{comparison.passed_count}/{total} checkpoints within tolerance{tail}{comparison.scope}")
    position = f", worst at token {divergence.position}" if divergence.position is not None else ""
    return (escape_html(f"{comparison.failed_count}/{total} checkpoints outside tolerance; first divergence at ")
            + f"<b>{escape_html(divergence.checkpoint)}</b>{escape_html(position + comparison.scope)}")


def _describe(metadata: dict) -> str:
    details = [str(metadata[key]) for key in ("arch", "dtype", "compiled") if metadata.get(key)]
    return str(metadata.get("producer") or "unknown producer") + (f" ({', '.join(details)})" if details else "")


def _summary(comparison: Comparison) -> str:
    counts: dict[str, int] = {}
    for result in comparison.checkpoints:
        counts[result.status] = counts.get(result.status, 0) + 1
    rows = [["reference", escape_html(_describe(comparison.reference_metadata))],
            ["candidate", escape_html(_describe(comparison.candidate_metadata))],
            ["checkpoints", escape_html(", ".join(f"{count} {status}" for status, count in counts.items()) or "none")],
            ["tolerances", escape_html(_basis(comparison))]]
    if comparison.missing:
        rows.append(["only in reference", escape_html(", ".join(comparison.missing), limit=2000)])
    if comparison.extra:
        rows.append(["only in candidate", escape_html(", ".join(comparison.extra), limit=2000)])
    origin = comparison.origin
    if origin is not None and (comparison.first_divergence is None or origin.checkpoint != comparison.first_divergence.checkpoint):
        attribution = comparison.attributions.get(origin.checkpoint)
        added = (f": adds rel_l2 {number(attribution.introduced_rel_l2)} to the {number(attribution.inherited_rel_l2)} "
                 "its inputs carried" if attribution is not None else "")
        rows.append(["error introduced at", escape_html(origin.checkpoint + added)])
    notes = "".join(f'<div class="note">{escape_html(note)}</div>' for note in comparison.notes)
    return section("Summary", table(None, rows), notes, anchor="summary")


def _basis(comparison: Comparison) -> str:
    bases = comparison.tolerance_bases
    if not bases:
        return "none"
    return bases[0] if len(bases) == 1 else f"{bases[0]} (and {len(bases) - 1} other bases; see each checkpoint)"


# --- the first divergence -----------------------------------------------------------


def _divergence(comparison: Comparison) -> str:
    divergence = comparison.first_divergence
    result = comparison.result(divergence.checkpoint)
    parts = []
    if result is not None:
        parts.append(table(None, _metric_rows(result, comparison)))
    if divergence.worst_elements:
        parts.append("<h3>The largest differences</h3>" + table(
            ["index", "token", "reference", "candidate", "|difference|"],
            [[escape_html(list(index)), escape_html(_token_of(index, divergence)), escape_html(number(r, 6)),
              escape_html(number(c, 6)), escape_html(number(d, 4))] for index, r, c, d in divergence.worst_elements],
            numeric={2, 3, 4}))
    if divergence.per_position:
        bound = (result.tolerance.position_bound(result.metrics)
                 if result is not None and result.tolerance and result.metrics else None)
        parts.append(_position_profile(divergence, bound))
    if divergence.per_head:
        parts.append(_profile(divergence.per_head, "head", "rel_l2 by head", None, None))
    return section(f"First divergence: {divergence.checkpoint}", *parts, anchor="divergence")


def _token_of(index: tuple[int, ...], divergence) -> str:
    """The token position of an element's index (core's names know each kind's token axis)."""
    checkpoint = parse(divergence.checkpoint)
    axis = checkpoint.token_axis if checkpoint is not None else 0
    return str(index[axis]) if len(index) > axis else "-"


def _metric_rows(result: CheckpointResult, comparison: Comparison) -> list[list[str]]:
    rows = [["status", escape_html(result.status)],
            ["shape", escape_html(f"reference {list(result.shape_reference)}, candidate {list(result.shape_candidate)}")]]
    if result.explanation:
        rows.append(["against the tolerance", "<br>".join(escape_html(line) for line in result.explanation)])
    metrics = result.metrics
    if metrics is not None:
        rows += [
            ["worst element", escape_html(f"|difference| {number(metrics.max_abs, 4)} at index "
                                          f"{list(metrics.worst_index) if metrics.worst_index is not None else '-'}, "
                                          f"token {metrics.worst_position}")],
            ["rel_l2 / worst token's", escape_html(f"{number(metrics.rel_l2)} / {number(metrics.position_rel_l2)}")],
            ["cosine / mean_abs / max_rel", escape_html(f"{number(metrics.cosine, 6)} / {number(metrics.mean_abs)} / "
                                                        f"{number(metrics.max_rel)}")],
            ["non-finite", escape_html(f"candidate {metrics.nan_candidate} NaN, {metrics.inf_candidate} Inf; "
                                       f"reference {metrics.nan_reference} NaN, {metrics.inf_reference} Inf")],
        ]
    if result.layout:
        rows.append(["layout", escape_html(result.layout)])
    attribution = comparison.attributions.get(result.name)
    if attribution is not None and attribution.inputs:
        rows.append(["introduced here", escape_html(f"rel_l2 {number(attribution.introduced_rel_l2)}; inherited from "
                                                    f"{', '.join(attribution.inputs)}: {number(attribution.inherited_rel_l2)}")])
    return rows


MAX_BARS = 512   # a longer sequence is drawn as the largest error of each run of positions


def _position_profile(divergence, bound: float | None) -> str:
    """rel_l2 along the sequence, the position where it first goes over its bound marked."""
    values, onset = list(divergence.per_position), divergence.onset
    title = "rel_l2 by token position" + (f"; over the bound from position {onset}" if onset is not None else "")
    if len(values) <= MAX_BARS:
        return svg.bars(values, [str(i) for i in range(len(values))],
                        tips=[f"token {i}: rel_l2 {number(v)}" + (f" (bound {number(bound)})" if bound else "")
                              for i, v in enumerate(values)],
                        bound=bound, highlight=divergence.position, title=title,
                        marker=None if onset is None else (onset, f"begins {onset}"))
    run = -(-len(values) // MAX_BARS)
    starts = range(0, len(values), run)
    pooled = [max(values[start:start + run], key=lambda v: v if v == v else float("inf")) for start in starts]
    return svg.bars(pooled, [str(start) for start in starts],
                    tips=[f"tokens {start}-{min(start + run, len(values)) - 1}: largest rel_l2 {number(v)}"
                          for start, v in zip(starts, pooled)],
                    bound=bound, highlight=None if divergence.position is None else divergence.position // run,
                    title=title + f" (the largest of each {run} positions)",
                    marker=None if onset is None else (onset // run, f"begins {onset}"))


def _profile(values, unit: str, title: str, bound: float | None, highlight: int | None) -> str:
    labels = [str(i) for i in range(len(values))]
    tips = [f"{unit} {i}: rel_l2 {number(v)}" + (f" (bound {number(bound)})" if bound else "") for i, v in enumerate(values)]
    return svg.bars(list(values), labels, tips=tips, bound=bound, highlight=highlight, title=title)


# --- diagnoses ----------------------------------------------------------------------


def _diagnoses(comparison: Comparison) -> str:
    if not comparison.diagnoses:
        return section("Diagnoses", paragraph("No cause was named: no detector found evidence for one.", "muted"),
                       anchor="diagnoses")
    items = []
    for diagnosis in comparison.diagnoses:
        result = comparison.result(diagnosis.checkpoint)
        evidence = f"<br><span class=\"muted\">at this checkpoint: {escape_html(_tip(result, comparison))}</span>" \
            if result is not None else ""
        items.append(f'<div class="diagnosis"><b>{escape_html(diagnosis.cause)}</b> at '
                     f"<code>{escape_html(diagnosis.checkpoint)}</code>: {escape_html(diagnosis.message)}{evidence}</div>")
    return section("Diagnoses", *items, anchor="diagnoses")


# --- heatmap and error by depth -----------------------------------------------------


def _tip(result: CheckpointResult, comparison: Comparison) -> str:
    lines = [f"{result.name}: {result.status}"]
    metrics = result.metrics
    if metrics is not None and result.tolerance is not None:
        lines.append(result.tolerance.explain(metrics).splitlines()[0])
    if metrics is not None:
        lines.append(f"max_abs {number(metrics.max_abs)} at {list(metrics.worst_index) if metrics.worst_index else '-'}"
                     f" (token {metrics.worst_position}); cosine {number(metrics.cosine, 6)}")
        if metrics.nan_candidate or metrics.inf_candidate:
            lines.append(f"candidate: {metrics.nan_candidate} NaN, {metrics.inf_candidate} Inf")
    attribution = comparison.attributions.get(result.name)
    if attribution is not None:
        lines.append(f"introduced {number(attribution.introduced_rel_l2)}, inherited {number(attribution.inherited_rel_l2)}")
    if result.note:
        lines.append(printable(result.note, limit=300))
    return "\n".join(lines)


def _cell(result: CheckpointResult | None, name: str, comparison: Comparison) -> svg.Cell:
    if result is None:
        side = "reference" if name in comparison.missing else "candidate"
        return svg.Cell(svg.ABSENT, f"{name}: only in the {side}")
    metrics = result.metrics
    if metrics is None or result.status not in (PASS, FAIL):
        return svg.Cell(svg.NOT_COMPARED, _tip(result, comparison), "~")
    ratio = result.noise_ratio
    fill = RATIO_SCALE.colour(ratio) if ratio is not None else REL_L2_SCALE.colour(metrics.rel_l2)
    mark = "" if result.status == PASS else ("!" if metrics.nan_candidate or metrics.inf_candidate else "✗")
    return svg.Cell(fill, _tip(result, comparison), mark)


def _grid(comparison: Comparison):
    """(layers, kinds, {(layer, kind): name}) over results, missing and extra; plus the names outside layers."""
    names = [r.name for r in comparison.checkpoints] + list(comparison.missing) + list(comparison.extra)
    cells, others = {}, []
    for name in names:
        checkpoint = parse(name)
        if checkpoint is not None and checkpoint.layer is not None:
            cells[(checkpoint.layer, checkpoint.kind)] = name
        elif not (name.endswith(".weight") or name.endswith(".bias")):
            others.append(name)
    present = {kind for _, kind in cells}
    kinds = [k for k in LAYER_KINDS if k in present] + sorted(present - set(LAYER_KINDS))
    return sorted({layer for layer, _ in cells}), kinds, cells, list(dict.fromkeys(others))


def _heatmap(comparison: Comparison) -> str:
    layers, kinds, names, others = _grid(comparison)
    results = {r.name: r for r in comparison.checkpoints}
    parts = []
    if layers:
        cells = {(i, j): _cell(results.get(names[(layer, kind)]), names[(layer, kind)], comparison)
                 for i, layer in enumerate(layers) for j, kind in enumerate(kinds) if (layer, kind) in names}
        parts.append(svg.heatmap([str(layer) for layer in layers], kinds, cells))
    if others:
        cells = {(0, j): _cell(results.get(name), name, comparison) for j, name in enumerate(others)}
        parts.append(svg.heatmap(["model"], others, cells, cell_w=60))
    if comparison.calibrated:
        legend = svg.colour_legend(RATIO_SCALE, "rel_l2 / noise floor (log scale)", marks=[(1.0, "noise"), (3.0, "3x")])
    else:
        legend = svg.colour_legend(REL_L2_SCALE, "rel_l2 (log scale; uncalibrated: no noise floor measured)")
    key = paragraph("✗ outside tolerance, ! non-finite in the candidate, ~ not compared (hover for the reason), "
                    "grey: held by one trace only. Hover a cell for its numbers.", "muted")
    title = "Error over noise, by layer and checkpoint" if comparison.calibrated else "Error by layer and checkpoint"
    return section(title, legend, f'<div class="panels">{"".join(parts)}</div>', key, anchor="heatmap")


def _depth(comparison: Comparison) -> str:
    layers, kinds, names, _ = _grid(comparison)
    results = {r.name: r for r in comparison.checkpoints}
    if len(layers) < 2:
        return ""
    values = [v for r in results.values() if r.metrics is not None
              for v in (r.metrics.rel_l2, r.tolerance.noise_rel_l2 if r.tolerance else None,
                        r.tolerance.max_rel_l2 if r.tolerance else None)
              if v is not None and math.isfinite(v) and v > 0]
    if not values:
        return ""
    scale = svg.LogScale(10.0 ** math.floor(math.log10(min(values))), 10.0 ** math.ceil(math.log10(max(values)) + 1e-9))
    panels = []
    for kind in kinds:
        rows = [(layer, results.get(names.get((layer, kind)))) for layer in layers]
        rows = [(layer, r) for layer, r in rows if r is not None and r.metrics is not None]
        if not rows:
            continue
        series = [svg.Series("rel_l2", tuple((layer, _finite(r.metrics.rel_l2), _tip(r, comparison))
                                             for layer, r in rows), "error")]
        for label, field in (("noise", "noise_rel_l2"), ("bound", "max_rel_l2")):
            points = tuple((layer, getattr(r.tolerance, field), "") for layer, r in rows
                           if r.tolerance is not None and getattr(r.tolerance, field) is not None)
            if points:
                series.append(svg.Series(label, points, label))
        panels.append(svg.line_panel(kind, series, scale, max(layers) + 1))
    key = ('<p class="key muted"><span><i style="border-color:#b3261e"></i>rel_l2 of the candidate</span>'
           '<span><i style="border-color:#2e7d32;border-top-style:dashed"></i>noise floor</span>'
           '<span><i style="border-color:#555;border-top-style:dotted"></i>bound</span> x: layer; y: log scale</p>')
    if not comparison.calibrated:
        key += paragraph("No noise floor was measured (uncalibrated tolerances), so only the error is drawn.", "muted")
    return section("Error against depth, per checkpoint kind", key, f'<div class="panels">{"".join(panels)}</div>',
                   anchor="depth")


def _finite(value: float) -> float:
    return value if math.isfinite(value) else float("inf")


# --- replay and every checkpoint ----------------------------------------------------


def _replay(comparison: Comparison) -> str:
    rows = []
    for layer, local in sorted(comparison.block_local_rel_l2.items()):
        out = comparison.result(f"layers.{layer}.out")
        propagated = out.metrics.rel_l2 if out is not None and out.metrics is not None else None
        rows.append([str(layer), escape_html(number(local)), escape_html(number(propagated))])
    return section("Replay: each block on the reference's input",
                   paragraph("local: the block's own error when fed the reference's input; propagated: its error in "
                             "the normal run, with what earlier layers passed on."),
                   table(["layer", "local rel_l2", "propagated rel_l2"], rows, numeric={1, 2}), anchor="replay")


def _checkpoints(comparison: Comparison) -> str:
    rows, classes = [], []
    for result in comparison.checkpoints:
        metrics, tolerance = result.metrics, result.tolerance
        rows.append([f"<code>{escape_html(result.name)}</code>", escape_html(result.status),
                     escape_html(number(metrics.rel_l2) if metrics else "-"),
                     escape_html(number(tolerance.noise_rel_l2) if tolerance else "-"),
                     escape_html(number(tolerance.max_rel_l2) if tolerance else "-"),
                     escape_html(number(metrics.cosine, 6) if metrics else "-"),
                     escape_html(number(metrics.max_abs) if metrics else "-"),
                     escape_html(result.reason or result.layout or "", limit=300)])
        classes.append("fail" if result.failed else "")
    body = table(["checkpoint", "status", "rel_l2", "noise", "bound", "cosine", "max_abs", "note"], rows,
                 row_classes=classes, numeric={2, 3, 4, 5, 6})
    return section("Every checkpoint", f"<details><summary>{len(rows)} checkpoints, in data-flow order</summary>"
                   f"{body}</details>", anchor="checkpoints")
