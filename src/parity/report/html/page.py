"""The HTML page every layout fills: the verdict header, sections, tables, the style and the tooltip script.

Every piece of text from a result or a trace's metadata is stripped of control
characters and escaped (`parity.report.text`); a Content-Security-Policy forbids
the page any network access, so a report opened offline shows exactly what it
shows online.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from parity.report.text import escape_html

CSP = "default-src 'none'; style-src 'unsafe-inline'; script-src 'unsafe-inline'; img-src data:"

CSS = """
body{font:14px/1.45 system-ui,-apple-system,'Segoe UI',sans-serif;margin:0;color:#1b1b1b;background:#fff}
main{max-width:1180px;margin:0 auto;padding:0 20px 40px}
header.verdict{padding:18px 24px;color:#fff}
header.pass{background:#1f7a3a} header.fail{background:#b3261e}
header h1{margin:0;font-size:26px} header p{margin:4px 0 0;font-size:15px}
h2{font-size:18px;border-bottom:1px solid #ddd;padding-bottom:4px;margin-top:28px}
h3{font-size:15px;margin:14px 0 6px}
table{border-collapse:collapse;font-size:13px;margin:6px 0}
td,th{border:1px solid #ddd;padding:3px 8px;text-align:left;vertical-align:top}
th{background:#f4f4f4} td.num{text-align:right;font-variant-numeric:tabular-nums}
tr.fail td{background:#fdecea} .muted{color:#666}
code,.mono{font-family:ui-monospace,Menlo,Consolas,monospace;font-size:12.5px}
.panels{display:flex;flex-wrap:wrap;gap:6px}
.diagnosis{border-left:4px solid #1565c0;background:#f3f7fc;padding:6px 12px;margin:8px 0}
.diagnosis b{color:#0d47a1}
.note{border-left:4px solid #e0a800;background:#fff8e1;padding:4px 12px;margin:6px 0}
.tokens span{display:inline-block;border:1px solid #ccc;border-radius:3px;padding:0 4px;margin:1px;
 font-family:ui-monospace,monospace;font-size:12.5px;white-space:pre}
.tokens span.diff{background:#fdecea;border-color:#b3261e} .tokens span.same{background:#eef7ee}
svg text{font:10px system-ui,sans-serif;fill:#333} svg text.title{font-weight:600;font-size:11px}
svg text.mark{font-size:11px;font-weight:700;pointer-events:none}
svg .grid{stroke:#e4e4e4} svg polyline.error{stroke:#b3261e;stroke-width:1.6}
svg polyline.noise{stroke:#2e7d32;stroke-dasharray:4 3;stroke-width:1.3}
svg polyline.bound{stroke:#555;stroke-dasharray:1 3;stroke-width:1.3}
svg .dot{fill:#b3261e} svg .bar{fill:#6b8fc7} svg .bar.hot{fill:#b3261e}
svg .bound{stroke:#000;stroke-dasharray:4 3}
svg [data-tip]:hover rect,svg circle[data-tip]:hover{stroke:#000;stroke-width:2}
#tip{position:fixed;z-index:10;max-width:460px;background:#222;color:#fff;padding:6px 9px;border-radius:4px;
 font:12px/1.4 ui-monospace,monospace;white-space:pre-wrap;pointer-events:none}
.key span{display:inline-block;margin-right:14px}
.key i{display:inline-block;width:22px;height:0;border-top:2px solid;vertical-align:middle;margin-right:4px}
"""

SCRIPT = """
(function () {
  var tip = document.getElementById('tip');
  document.addEventListener('mouseover', function (event) {
    var target = event.target.closest ? event.target.closest('[data-tip]') : null;
    if (!target) { tip.hidden = true; return; }
    tip.textContent = target.getAttribute('data-tip');
    tip.hidden = false;
  });
  document.addEventListener('mousemove', function (event) {
    var x = Math.min(event.clientX + 14, window.innerWidth - tip.offsetWidth - 8);
    tip.style.left = x + 'px';
    tip.style.top = (event.clientY + 16) + 'px';
  });
})();
"""


@dataclass(frozen=True)
class Page:
    """What a result contributes: the headline, whether it passed, and its sections (HTML, already escaped)."""

    title: str
    passed: bool
    headline: str
    sections: tuple[str, ...]

    def __repr__(self) -> str:
        return f"<Page {self.title!r} {'pass' if self.passed else 'fail'}, {len(self.sections)} sections>"


def document(page: Page) -> str:
    """The whole page: verdict header, the sections, the tooltip script; nothing fetched."""
    status = "pass" if page.passed else "fail"
    return "".join([
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">",
        f'<meta http-equiv="Content-Security-Policy" content="{CSP}">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>parity {status.upper()}: {escape_html(page.title)}</title><style>{CSS}</style></head><body>",
        f'<header class="verdict {status}"><h1>{status.upper()}</h1><p>{page.headline}</p></header><main>',
        *page.sections,
        '</main><div id="tip" hidden></div>',
        f"<script>{SCRIPT}</script></body></html>\n",
    ])


# --- pieces shared by the layouts ---------------------------------------------------


def section(title: str, *parts: str, anchor: str = "") -> str:
    anchor_attribute = f' id="{escape_html(anchor)}"' if anchor else ""
    return f"<section{anchor_attribute}><h2>{escape_html(title)}</h2>{''.join(parts)}</section>"


def table(header: list[str] | None, rows: list[list[str]], *, row_classes: list[str] | None = None,
          numeric: set[int] = frozenset()) -> str:
    """A table whose cells are already HTML (escape text before passing it)."""
    head = "".join(f"<th>{escape_html(cell)}</th>" for cell in header) if header else ""
    body = []
    for index, row in enumerate(rows):
        css = f' class="{row_classes[index]}"' if row_classes and row_classes[index] else ""
        cells = "".join(f'<td class="num">{cell}</td>' if column in numeric else f"<td>{cell}</td>"
                        for column, cell in enumerate(row))
        body.append(f"<tr{css}>{cells}</tr>")
    thead = f"<thead><tr>{head}</tr></thead>" if head else ""
    return f"<table>{thead}<tbody>{''.join(body)}</tbody></table>"


def paragraph(text: str, css: str = "") -> str:
    return f'<p class="{css}">{escape_html(text)}</p>' if css else f"<p>{escape_html(text)}</p>"


def metadata_section(reference: dict, candidate: dict) -> str:
    """Both traces' metadata side by side, every key of either, values as JSON, escaped."""
    keys = list(dict.fromkeys([*map(str, reference), *map(str, candidate)]))
    by_text = ({str(k): v for k, v in reference.items()}, {str(k): v for k, v in candidate.items()})
    rows = [[f"<code>{escape_html(key)}</code>", *(_value(side.get(key, None), key in side) for side in by_text)]
            for key in keys]
    return section("Trace metadata", table(["key", "reference", "candidate"], rows) if rows
                   else paragraph("Neither trace carries metadata.", "muted"), anchor="metadata")


def _value(value, present: bool) -> str:
    if not present:
        return '<span class="muted">-</span>'
    text = value if isinstance(value, str) else json.dumps(value, default=str, ensure_ascii=False)
    return f'<span class="mono">{escape_html(text, limit=600)}</span>'
