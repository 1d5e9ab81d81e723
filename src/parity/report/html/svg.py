"""Inline SVG charts for the HTML report: a log colour scale, a heatmap, small line panels, bars.

Pure drawing: each function takes values already computed (by core) and returns
SVG markup. Text goes through `escape_html`; hover details ride on `data-tip`
attributes (shown by the page's script) and on `<title>` elements (shown by the
browser without script).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from parity.report.text import escape_html, number

# Colour stops over [0, 1]: pale below the noise, green at it, yellow near the bound, dark red far above.
STOPS = ((0.0, (240, 246, 252)), (0.4, (161, 217, 155)), (0.5, (254, 224, 139)),
         (0.7, (244, 109, 67)), (1.0, (103, 0, 31)))
ABSENT = "#eeeeee"
NOT_COMPARED = "#c8c8c8"


@dataclass(frozen=True)
class LogScale:
    """Maps positive values to [0, 1] on a log scale, clamped at both ends."""

    low: float
    high: float

    def __repr__(self) -> str:
        return f"<LogScale {self.low:g}..{self.high:g}>"

    def fraction(self, value: float) -> float:
        if math.isnan(value) or value >= self.high:
            return 1.0
        if value <= self.low:
            return 0.0
        return (math.log10(value) - math.log10(self.low)) / (math.log10(self.high) - math.log10(self.low))

    def colour(self, value: float) -> str:
        return colour(self.fraction(value))

    def ticks(self) -> list[float]:
        return [10.0 ** e for e in range(math.ceil(math.log10(self.low)), math.floor(math.log10(self.high)) + 1)]


def colour(fraction: float) -> str:
    for (f0, c0), (f1, c1) in zip(STOPS, STOPS[1:]):
        if fraction <= f1:
            t = 0.0 if f1 == f0 else (fraction - f0) / (f1 - f0)
            return "#" + "".join(f"{round(a + (b - a) * t):02x}" for a, b in zip(c0, c1))
    return "#" + "".join(f"{c:02x}" for c in STOPS[-1][1])


@dataclass(frozen=True)
class Cell:
    fill: str
    tip: str
    mark: str = ""          # a symbol drawn in the cell ("✗", "!", "~")

    def __repr__(self) -> str:
        return f"<Cell {self.fill} {self.mark!r}>"


def _tip(tip: str) -> str:
    return f' data-tip="{escape_html(tip)}"'


def heatmap(rows: list[str], columns: list[str], cells: dict[tuple[int, int], Cell], *,
            cell_w: int = 26, cell_h: int = 16) -> str:
    """A grid with `rows` down the left and `columns` across the top; missing cells are left blank."""
    left, top = 64, min(58, 14 + 6 * max((len(c) for c in columns), default=0))
    width, height = left + cell_w * len(columns) + 8, top + cell_h * len(rows) + 8
    parts = [f'<svg class="chart heatmap" xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
             f'viewBox="0 0 {width} {height}" role="img">']
    for j, column in enumerate(columns):
        x = left + j * cell_w + cell_w / 2
        parts.append(f'<text x="{x:.1f}" y="{top - 6}" transform="rotate(-55 {x:.1f} {top - 6})" '
                     f'class="axis">{escape_html(column)}</text>')
    for i, row in enumerate(rows):
        parts.append(f'<text x="{left - 6}" y="{top + i * cell_h + cell_h - 4}" text-anchor="end" '
                     f'class="axis">{escape_html(row)}</text>')
    for (i, j), cell in sorted(cells.items()):
        x, y = left + j * cell_w, top + i * cell_h
        stroke = ' stroke="#111" stroke-width="1.5"' if cell.mark else ' stroke="#fff" stroke-width="1"'
        parts.append(f'<g class="cell"{_tip(cell.tip)}><title>{escape_html(cell.tip)}</title>'
                     f'<rect x="{x}" y="{y}" width="{cell_w}" height="{cell_h}" fill="{cell.fill}"{stroke}/>')
        if cell.mark:
            ink = ' style="fill:#fff"' if _dark(cell.fill) else ""
            parts.append(f'<text x="{x + cell_w / 2}" y="{y + cell_h - 4}" text-anchor="middle" '
                         f'class="mark"{ink}>{escape_html(cell.mark)}</text>')
        parts.append("</g>")
    parts.append("</svg>")
    return "".join(parts)


def _dark(fill: str) -> bool:
    """Whether a #rrggbb fill needs light text on it."""
    red, green, blue = (int(fill[i:i + 2], 16) for i in (1, 3, 5))
    return 0.299 * red + 0.587 * green + 0.114 * blue < 110


def colour_legend(scale: LogScale, label: str, *, marks: list[tuple[float, str]] = ()) -> str:
    """A horizontal colour bar with decade ticks and labelled marks (e.g. the bound)."""
    width, bar_w, left = 380, 300, 24
    stops = "".join(f'<stop offset="{f:.2f}" stop-color="{colour(f)}"/>' for f in [i / 20 for i in range(21)])
    parts = [f'<svg class="legend" xmlns="http://www.w3.org/2000/svg" width="{width}" height="46" viewBox="0 0 {width} 46">',
             f'<defs><linearGradient id="scale">{stops}</linearGradient></defs>',
             f'<rect x="{left}" y="14" width="{bar_w}" height="10" fill="url(#scale)" stroke="#999"/>',
             f'<text x="{left - 14}" y="10" class="axis">{escape_html(label)}</text>']
    ticks = scale.ticks()
    for value in ticks[::math.ceil(len(ticks) / 6)]:
        x = left + bar_w * scale.fraction(value)
        parts.append(f'<line x1="{x:.1f}" x2="{x:.1f}" y1="24" y2="28" stroke="#555"/>'
                     f'<text x="{x:.1f}" y="38" text-anchor="middle" class="axis">{value:g}</text>')
    for value, text in marks:
        x = left + bar_w * scale.fraction(value)
        parts.append(f'<line x1="{x:.1f}" x2="{x:.1f}" y1="12" y2="26" stroke="#000" stroke-width="2"/>'
                     f'<text x="{x:.1f}" y="46" text-anchor="middle" class="axis">{escape_html(text)}</text>')
    parts.append("</svg>")
    return "".join(parts)


@dataclass(frozen=True)
class Series:
    """One line of a panel: (x, y, tip) points; y values that are not positive are clamped to the floor."""

    label: str
    points: tuple[tuple[float, float, str], ...]
    style: str              # "error", "noise" or "bound" (CSS classes)

    def __repr__(self) -> str:
        return f"<Series {self.label} {len(self.points)} points>"


def line_panel(title: str, series: list[Series], scale: LogScale, x_count: int, *,
               width: int = 230, height: int = 130) -> str:
    """A small log-y line chart over x = 0..x_count-1 (layers), one polyline per series."""
    left, right, top, bottom = 40, 8, 18, 20
    plot_w, plot_h = width - left - right, height - top - bottom

    def x_of(x: float) -> float:
        return left + (plot_w * x / max(x_count - 1, 1))

    def y_of(y: float) -> float:
        return top + plot_h * (1.0 - scale.fraction(y if y > 0 else scale.low))

    parts = [f'<svg class="chart panel" xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
             f'viewBox="0 0 {width} {height}" role="img">',
             f'<text x="{left}" y="12" class="title">{escape_html(title)}</text>',
             f'<rect x="{left}" y="{top}" width="{plot_w}" height="{plot_h}" fill="#fafafa" stroke="#ccc"/>']
    for tick in scale.ticks()[::2]:
        y = y_of(tick)
        parts.append(f'<line x1="{left}" x2="{left + plot_w}" y1="{y:.1f}" y2="{y:.1f}" class="grid"/>'
                     f'<text x="{left - 3}" y="{y + 3:.1f}" text-anchor="end" class="axis">{tick:.0e}</text>')
    parts.append(f'<text x="{left}" y="{height - 4}" class="axis">0</text>'
                 f'<text x="{left + plot_w}" y="{height - 4}" text-anchor="end" class="axis">{x_count - 1}</text>')
    for line in series:
        coords = " ".join(f"{x_of(x):.1f},{y_of(y):.1f}" for x, y, _ in line.points if not math.isnan(y))
        parts.append(f'<polyline class="{line.style}" points="{coords}" fill="none"/>')
        if line.style == "error":
            for x, y, tip in line.points:
                parts.append(f'<circle class="dot" cx="{x_of(x):.1f}" cy="{y_of(y):.1f}" r="2.5"{_tip(tip)}>'
                             f'<title>{escape_html(tip)}</title></circle>')
    parts.append("</svg>")
    return "".join(parts)


def bars(values: list[float], labels: list[str], *, tips: list[str], bound: float | None = None,
         highlight: int | None = None, width: int = 520, height: int = 150, title: str = "",
         marker: tuple[int, str] | None = None) -> str:
    """Vertical bars on a linear scale from 0 to the largest finite value (or the bound); non-finite bars full."""
    left, top, bottom = 46, 18, 22
    plot_w, plot_h = width - left - 6, height - top - bottom
    finite = [v for v in values if math.isfinite(v)]
    peak = max(finite + ([bound] if bound else []) + [1e-30])
    step = plot_w / max(len(values), 1)
    parts = [f'<svg class="chart bars" xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
             f'viewBox="0 0 {width} {height}" role="img">',
             f'<text x="{left}" y="12" class="title">{escape_html(title)}</text>',
             f'<line x1="{left}" x2="{left + plot_w}" y1="{top + plot_h}" y2="{top + plot_h}" stroke="#999"/>',
             f'<text x="{left - 3}" y="{top + 8}" text-anchor="end" class="axis">{number(peak, 2)}</text>',
             f'<text x="{left - 3}" y="{top + plot_h}" text-anchor="end" class="axis">0</text>']
    for i, (value, label, tip) in enumerate(zip(values, labels, tips)):
        size = plot_h if not math.isfinite(value) else plot_h * max(value, 0.0) / peak
        css = "bar hot" if i == highlight or not math.isfinite(value) else "bar"
        x = left + i * step
        parts.append(f'<g{_tip(tip)}><title>{escape_html(tip)}</title><rect class="{css}" x="{x + step * 0.1:.1f}" '
                     f'y="{top + plot_h - size:.1f}" width="{max(step * 0.8, 1):.1f}" height="{max(size, 0.5):.1f}"/></g>')
        if len(values) <= 40 or i % math.ceil(len(values) / 40) == 0:
            parts.append(f'<text x="{x + step / 2:.1f}" y="{height - 8}" text-anchor="middle" '
                         f'class="axis">{escape_html(label)}</text>')
    if bound:
        y = top + plot_h - plot_h * bound / peak
        label_y = y - 3 if y > top + 12 else y + 11   # below the line when it runs along the top
        parts.append(f'<line class="bound" x1="{left}" x2="{left + plot_w}" y1="{y:.1f}" y2="{y:.1f}"/>'
                     f'<text x="{left + plot_w}" y="{label_y:.1f}" text-anchor="end" class="axis">bound {number(bound, 2)}</text>')
    if marker is not None:   # (bar index, label): a vertical line where something begins
        x = left + marker[0] * step
        parts.append(f'<line class="bound" x1="{x:.1f}" x2="{x:.1f}" y1="{top}" y2="{top + plot_h}"/>'
                     f'<text x="{x + 3:.1f}" y="{top + 10}" class="axis">{escape_html(marker[1])}</text>')
    parts.append("</svg>")
    return "".join(parts)
