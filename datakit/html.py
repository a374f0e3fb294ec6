"""Self-contained HTML pages: the run report (``evals report``) and the dataset card
(``datakit inspect --html``) are built from these parts.

A page is one file that opens offline: CSS, the few lines of script (sortable tables, the map's
record panel) and every chart (SVG drawn here, no plotting library) are inline, and nothing is
fetched. Charts use the Okabe-Ito palette, which stays distinct under the common colour-vision
deficiencies, and every chart has a text title and a caption; no animation is needed to read it.
"""

from __future__ import annotations

import html
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from datakit.io import write_text

# Okabe & Ito (2008), without yellow (too pale on white)
PALETTE = ["#0072B2", "#E69F00", "#009E73", "#CC79A7", "#D55E00", "#56B4E9", "#000000"]
DASHES = ["", "6 3", "2 3", "8 3 2 3"]  # a seed's line style, so seeds stay apart without colour
GREY = "#8a8a8a"

STYLE = """
body{font:15px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;color:#1b1b1b;margin:0;background:#fff}
main{max-width:1100px;margin:0 auto;padding:1rem 1.5rem 4rem}
header{border-bottom:1px solid #ddd;margin-bottom:1rem}
h1{font-size:1.6rem;margin:.6rem 0 .2rem}h2{font-size:1.3rem;margin-top:2.2rem;border-bottom:1px solid #eee}
h3{font-size:1.05rem;margin-top:1.4rem}
nav ul{display:flex;flex-wrap:wrap;gap:.3rem 1.2rem;list-style:none;padding:0;margin:.4rem 0 .8rem}
table{border-collapse:collapse;margin:.6rem 0 1rem;font-size:.9rem}
caption{text-align:left;font-weight:600;padding:.3rem 0;caption-side:top}
th,td{border:1px solid #ddd;padding:.3rem .5rem;vertical-align:top;text-align:left}
th{background:#f4f4f4}td.num{text-align:right;font-variant-numeric:tabular-nums;white-space:nowrap}
th button{all:unset;cursor:pointer;font-weight:600}th button:focus{outline:2px solid #0072B2}
th button::after{content:" \\2195";color:#999}
.better{color:#006b4f;font-weight:600}.worse{color:#b34700;font-weight:600}.muted{color:#666}
.note{color:#444;max-width:70ch}.figs{display:flex;flex-wrap:wrap;gap:1rem}
figure{margin:.4rem 0 1rem}figcaption{font-size:.85rem;color:#444;max-width:70ch}
svg text{font:11px system-ui,sans-serif;fill:#333}
pre{white-space:pre-wrap;word-break:break-word;background:#f7f7f7;padding:.5rem;border-radius:4px;
 font-size:.82rem;max-height:24rem;overflow:auto;margin:.2rem 0}
.side{display:grid;grid-template-columns:repeat(auto-fit,minmax(240px,1fr));gap:.6rem}
.side>div{border:1px solid #e2e2e2;border-radius:4px;padding:.4rem}
.panel{border:1px solid #ccc;border-radius:4px;padding:.5rem;min-height:4rem;background:#fbfbfb}
details{margin:.3rem 0}summary{cursor:pointer}
a{color:#0061a0}
@media print{nav,.panel{display:none}h2{break-before:auto}pre{max-height:none}}
"""

SCRIPT = """
document.querySelectorAll('table[data-sortable] th button').forEach(function (button) {
  button.addEventListener('click', function () {
    var th = button.parentElement, table = th.closest('table'), body = table.tBodies[0];
    var column = Array.prototype.indexOf.call(th.parentElement.children, th);
    var up = th.getAttribute('aria-sort') !== 'ascending';
    table.querySelectorAll('th').forEach(function (h) { h.removeAttribute('aria-sort'); });
    th.setAttribute('aria-sort', up ? 'ascending' : 'descending');
    var key = function (row) {
      var cell = row.children[column], v = cell ? cell.getAttribute('data-sort') : null;
      if (v === null) { return cell ? cell.textContent.trim() : ''; }
      return v === '' ? Infinity : parseFloat(v);
    };
    Array.from(body.rows).sort(function (a, b) {
      var x = key(a), y = key(b), order = (x < y ? -1 : x > y ? 1 : 0);
      return up ? order : -order;
    }).forEach(function (row) { body.appendChild(row); });
  });
});
document.querySelectorAll('svg[data-records]').forEach(function (svg) {
  var records = JSON.parse(document.getElementById(svg.getAttribute('data-records')).textContent);
  var panel = document.getElementById(svg.getAttribute('data-panel'));
  var show = function (event) {
    var i = event.target.getAttribute('data-i');
    if (i === null) { return; }
    var r = records[+i];
    panel.replaceChildren();
    var head = document.createElement('p');
    head.textContent = r.label;
    var body = document.createElement('pre');
    body.textContent = r.text;
    panel.append(head, body);
  };
  svg.addEventListener('mouseover', show);
  svg.addEventListener('click', show);
  svg.addEventListener('focusin', show);
});
"""


def esc(value: Any) -> str:
    """Text made safe to put inside HTML (element content or a quoted attribute)."""
    return html.escape(str(value), quote=True)


def script_json(value: Any) -> str:
    """JSON to embed in a <script type="application/json"> element: ``<``, ``>`` and ``&`` as
    JSON escapes, so that no text in a record can end the element or change how it is parsed."""
    text = json.dumps(value, ensure_ascii=False)
    return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


def fmt(value: float | None, digits: int = 3, sign: bool = False) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    return f"{value:+.{digits}f}" if sign else f"{value:.{digits}f}"


# --- the page -----------------------------------------------------------------------------


@dataclass
class Section:
    anchor: str
    title: str
    parts: list[str] = field(default_factory=list)

    def render(self) -> str:
        return (f'<section id="{esc(self.anchor)}" aria-labelledby="{esc(self.anchor)}-h">'
                f'<h2 id="{esc(self.anchor)}-h">{esc(self.title)}</h2>{"".join(self.parts)}</section>')  # fmt: skip


@dataclass
class Page:
    """A page built top to bottom: ``section`` starts a headed part (listed in the page's
    navigation), ``add`` appends HTML to it, ``write`` saves the file atomically."""

    title: str
    subtitle: str = ""  # HTML
    sections: list[Section] = field(default_factory=list)

    def section(self, title: str, anchor: str, intro: str = "") -> None:
        """Start a section; ``intro`` (HTML) is its first paragraph."""
        self.sections.append(Section(anchor, title, [f'<p class="note">{intro}</p>'] if intro else []))

    def add(self, fragment: str) -> None:
        """Append HTML to the current section."""
        self.sections[-1].parts.append(fragment)

    def render(self) -> str:
        nav = "".join(f'<li><a href="#{esc(s.anchor)}">{esc(s.title)}</a></li>' for s in self.sections)
        return (
            '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
            '<meta name="viewport" content="width=device-width,initial-scale=1">'
            # nothing may be fetched: a stray URL fails closed instead of calling out
            '<meta http-equiv="Content-Security-Policy" content="default-src \'none\'; '
            "style-src 'unsafe-inline'; script-src 'unsafe-inline'; img-src data:\">"
            f"<title>{esc(self.title)}</title><style>{STYLE}</style></head><body><main>"
            f"<header><h1>{esc(self.title)}</h1>"
            + (f'<p class="muted">{self.subtitle}</p>' if self.subtitle else "")
            + (f'<nav aria-label="Sections"><ul>{nav}</ul></nav>' if nav else "")
            + "</header>"
            + "".join(s.render() for s in self.sections)
            + f"</main><script>{SCRIPT}</script></body></html>\n"
        )

    def write(self, path: str | Path) -> Path:
        write_text(path, self.render())
        return Path(path)


# --- tables -------------------------------------------------------------------------------


@dataclass
class Cell:
    """One table cell: its HTML, an optional numeric sort key, and an optional link."""

    html: str
    sort: float | None = None
    href: str | None = None
    css: str = ""

    def render(self) -> str:
        inner = f'<a href="{esc(self.href)}">{self.html}</a>' if self.href else self.html
        attrs = f' class="{self.css}"' if self.css else ""
        if self.sort is not None:  # an empty key (NaN) sorts last
            attrs += f' data-sort="{"" if math.isnan(self.sort) else repr(float(self.sort))}"'
        return f"<td{attrs}>{inner}</td>"


def table(caption: str, header: list[str], rows: list[list[Cell | str]], sortable: bool = True) -> str:
    """A table with a caption; with ``sortable`` each column header is a button that sorts by it."""
    heads = "".join(f'<th scope="col">{f"<button>{esc(h)}</button>" if sortable else esc(h)}</th>' for h in header)
    body = "".join(
        "<tr>" + "".join(c.render() if isinstance(c, Cell) else f"<td>{esc(c)}</td>" for c in row) + "</tr>"
        for row in rows
    )
    sort = " data-sortable" if sortable else ""
    return f"<table{sort}><caption>{esc(caption)}</caption><thead><tr>{heads}</tr></thead><tbody>{body}</tbody></table>"


def figure(svg: str, caption: str) -> str:
    return f"<figure>{svg}<figcaption>{caption}</figcaption></figure>"


def details(summary: str, body: str, open_: bool = False) -> str:
    return f"<details{' open' if open_ else ''}><summary>{summary}</summary>{body}</details>"


def pre(text: str) -> str:
    return f"<pre>{esc(text)}</pre>"


# --- charts -------------------------------------------------------------------------------


def nice_ticks(low: float, high: float, count: int = 5) -> list[float]:
    """Round tick values covering [low, high]."""
    if not math.isfinite(low) or not math.isfinite(high):
        return [0.0]
    if high <= low:
        high = low + (abs(low) or 1.0) * 0.1
    raw = (high - low) / max(1, count)
    step = 10 ** math.floor(math.log10(raw))
    step *= next(m for m in (1, 2, 2.5, 5, 10) if raw <= step * m)
    first = math.floor(low / step) * step
    ticks, value = [], first
    while value <= high + step * 1e-9:
        ticks.append(round(value, 12))
        value += step
    if ticks[-1] < high:
        ticks.append(round(value, 12))
    return ticks


@dataclass
class Scale:
    """A linear map from data values to pixels."""

    low: float
    high: float
    start: float
    end: float

    def __call__(self, value: float) -> float:
        span = self.high - self.low or 1.0
        return self.start + (value - self.low) / span * (self.end - self.start)


def _svg(width: int, height: int, title: str, body: str, extra: str = "") -> str:
    return (f'<svg xmlns="http://www.w3.org/2000/svg" role="img" width="{width}" height="{height}" '
            f'viewBox="0 0 {width} {height}"{extra}><title>{esc(title)}</title>{body}</svg>')  # fmt: skip


def _x_axis(scale: Scale, ticks: list[float], y: float, label: str, top: float | None = None) -> str:
    parts = [f'<line x1="{scale.start:.1f}" x2="{scale.end:.1f}" y1="{y}" y2="{y}" stroke="#999"/>']
    for t in ticks:
        x = scale(t)
        parts.append(f'<line x1="{x:.1f}" x2="{x:.1f}" y1="{y}" y2="{y + 4}" stroke="#999"/>'
                     f'<text x="{x:.1f}" y="{y + 15}" text-anchor="middle">{t:g}</text>')  # fmt: skip
        if top is not None:
            parts.append(f'<line x1="{x:.1f}" x2="{x:.1f}" y1="{top}" y2="{y}" stroke="#eee"/>')
    parts.append(f'<text x="{(scale.start + scale.end) / 2:.1f}" y="{y + 30}" text-anchor="middle">{esc(label)}</text>')
    return "".join(parts)


def _y_axis(scale: Scale, ticks: list[float], x: float, label: str, right: float) -> str:
    parts = [f'<line x1="{x}" x2="{x}" y1="{scale.start:.1f}" y2="{scale.end:.1f}" stroke="#999"/>']
    for t in ticks:
        y = scale(t)
        parts.append(f'<line x1="{x}" x2="{right}" y1="{y:.1f}" y2="{y:.1f}" stroke="#eee"/>'
                     f'<text x="{x - 5}" y="{y + 4:.1f}" text-anchor="end">{t:g}</text>')  # fmt: skip
    mid = (scale.start + scale.end) / 2
    parts.append(f'<text x="12" y="{mid:.1f}" text-anchor="middle" transform="rotate(-90 12 {mid:.1f})">'
                 f"{esc(label)}</text>")  # fmt: skip
    return "".join(parts)


@dataclass
class Mark:
    """A point on a dot chart, with an optional interval, tooltip and link."""

    x: float
    low: float | None = None
    high: float | None = None
    color: str = PALETTE[0]
    hollow: bool = False
    tip: str = ""
    href: str | None = None


def dot_chart(rows: list[tuple[str, list[Mark]]], title: str, x_label: str, zero: bool = False,
              width: int = 520) -> str:  # fmt: skip
    """Rows of labelled marks on a shared x axis: intervals as bars, points as dots."""
    xs = [v for _, marks in rows for m in marks for v in (m.x, m.low, m.high) if v is not None and math.isfinite(v)]
    if zero:
        xs.append(0.0)
    ticks = nice_ticks(min(xs, default=0.0), max(xs, default=1.0))
    label_w = max([len(label) for label, _ in rows] + [4]) * 7 + 12
    row_h, top = 26, 28
    height = top + row_h * len(rows) + 40
    scale = Scale(ticks[0], ticks[-1], label_w, width - 16)
    axis_y = top + row_h * len(rows) + 4
    body = [f'<text x="{width / 2}" y="16" text-anchor="middle" font-weight="600">{esc(title)}</text>',
            _x_axis(scale, ticks, axis_y, x_label, top=top - 6)]  # fmt: skip
    if zero:
        body.append(f'<line x1="{scale(0):.1f}" x2="{scale(0):.1f}" y1="{top - 6}" y2="{axis_y}" stroke="#333"/>')
    for r, (label, marks) in enumerate(rows):
        y = top + row_h * r + row_h / 2
        body.append(f'<text x="{label_w - 8}" y="{y + 4}" text-anchor="end">{esc(label)}</text>')
        for m in marks:
            if m.low is not None and m.high is not None:
                body.append(f'<line x1="{scale(m.low):.1f}" x2="{scale(m.high):.1f}" y1="{y}" y2="{y}" '
                            f'stroke="{m.color}" stroke-width="2.5"/>')  # fmt: skip
            fill = "#fff" if m.hollow else m.color
            dot = (f'<circle class="mark" cx="{scale(m.x):.1f}" cy="{y}" r="5" fill="{fill}" stroke="{m.color}" '
                   f'stroke-width="2"><title>{esc(m.tip)}</title></circle>')  # fmt: skip
            body.append(f'<a href="{esc(m.href)}">{dot}</a>' if m.href else dot)
    return _svg(width, height, title, "".join(body))


def line_chart(series: list[tuple[str, str, str, list[tuple[float, float]]]], title: str, x_label: str,
               y_label: str, width: int = 640, height: int = 300) -> str:  # fmt: skip
    """Lines (label, colour, dash, points) on shared axes, with a legend below."""
    points = [p for *_, pts in series for p in pts if math.isfinite(p[1])]
    if not points:
        return ""
    x_ticks = nice_ticks(min(p[0] for p in points), max(p[0] for p in points))
    y_ticks = nice_ticks(min(p[1] for p in points), max(p[1] for p in points))
    legend_rows = math.ceil(len(series) / 3)
    plot_bottom = height - 48 - 16 * legend_rows
    x = Scale(x_ticks[0], x_ticks[-1], 56, width - 12)
    y = Scale(y_ticks[0], y_ticks[-1], plot_bottom, 28)
    body = [f'<text x="{width / 2}" y="16" text-anchor="middle" font-weight="600">{esc(title)}</text>',
            _y_axis(y, y_ticks, 56, y_label, width - 12), _x_axis(x, x_ticks, plot_bottom, x_label)]  # fmt: skip
    for i, (label, color, dash, pts) in enumerate(series):
        path = " ".join(f"{x(a):.1f},{y(b):.1f}" for a, b in pts if math.isfinite(b))
        dash_attr = f' stroke-dasharray="{dash}"' if dash else ""
        body.append(f'<polyline class="series" fill="none" stroke="{color}" stroke-width="1.8"{dash_attr} '
                    f'points="{path}"><title>{esc(label)}</title></polyline>')  # fmt: skip
        lx, ly = 60 + (i % 3) * ((width - 70) / 3), plot_bottom + 42 + 16 * (i // 3)
        body.append(f'<line x1="{lx}" x2="{lx + 24}" y1="{ly - 4}" y2="{ly - 4}" stroke="{color}" stroke-width="2"'
                    f"{dash_attr}/><text x=\"{lx + 30}\" y=\"{ly}\">{esc(label)}</text>")  # fmt: skip
    return _svg(width, height, title, "".join(body))


def bar_chart(counts: list[tuple[str, float]], title: str, x_label: str, width: int = 480) -> str:
    """Horizontal bars, one per (label, value), largest first as given."""
    if not counts:
        return ""
    label_w = min(220, max(len(label) for label, _ in counts) * 7 + 12)
    top, row_h = 26, 20
    height = top + row_h * len(counts) + 40
    ticks = nice_ticks(0.0, max(v for _, v in counts) or 1.0)
    scale = Scale(0.0, ticks[-1], label_w, width - 40)
    axis_y = top + row_h * len(counts) + 4
    body = [f'<text x="{width / 2}" y="16" text-anchor="middle" font-weight="600">{esc(title)}</text>',
            _x_axis(scale, ticks, axis_y, x_label)]  # fmt: skip
    for r, (label, value) in enumerate(counts):
        yy = top + row_h * r
        body.append(f'<text x="{label_w - 6}" y="{yy + 14}" text-anchor="end">{esc(label[:30])}</text>'
                    f'<rect class="bar" x="{label_w}" y="{yy + 3}" width="{max(0.5, scale(value) - label_w):.1f}" '
                    f'height="{row_h - 6}" fill="{PALETTE[0]}"><title>{esc(label)}: {value:g}</title></rect>'
                    f'<text x="{scale(value) + 4:.1f}" y="{yy + 14}">{value:g}</text>')  # fmt: skip
    return _svg(width, height, title, "".join(body))


def histogram(values: list[float], title: str, x_label: str, bins: int = 20, width: int = 480) -> str:
    """Counts of ``values`` in equal-width bins (log-spaced when the values span decades)."""
    finite = [v for v in values if math.isfinite(v)]
    if not finite:
        return ""
    low, high = min(finite), max(finite)
    log = low > 0 and high / low > 100
    edges_low, edges_high = (math.log10(low), math.log10(high)) if log else (low, high)
    if edges_high <= edges_low:
        edges_high = edges_low + 1
    step = (edges_high - edges_low) / bins
    counts = [0] * bins
    for v in finite:
        position = (math.log10(v) if log else v) - edges_low
        counts[min(bins - 1, int(position / step))] += 1
    height, top, bottom = 220, 26, 180
    y_ticks = nice_ticks(0, max(counts))
    y = Scale(0, y_ticks[-1], bottom, top)
    left, right = 50, width - 12
    bar_w = (right - left) / bins
    body = [f'<text x="{width / 2}" y="16" text-anchor="middle" font-weight="600">{esc(title)}</text>',
            _y_axis(y, y_ticks, left, "records", right)]  # fmt: skip
    for i, count in enumerate(counts):
        a, b = edges_low + i * step, edges_low + (i + 1) * step
        a, b = (10**a, 10**b) if log else (a, b)
        body.append(f'<rect class="bar" x="{left + i * bar_w:.1f}" y="{y(count):.1f}" width="{bar_w - 1:.1f}" '
                    f'height="{bottom - y(count):.1f}" fill="{PALETTE[0]}"><title>{a:,.0f}–{b:,.0f}: {count}</title>'
                    "</rect>")  # fmt: skip
    first, last = (10**edges_low, 10**edges_high) if log else (edges_low, edges_high)
    body.append(f'<text x="{left}" y="{bottom + 15}">{first:,.0f}</text>'
                f'<text x="{right}" y="{bottom + 15}" text-anchor="end">{last:,.0f}</text>'
                f'<text x="{(left + right) / 2}" y="{bottom + 30}" text-anchor="middle">'
                f"{esc(x_label)}{' (log scale)' if log else ''}</text>")  # fmt: skip
    return _svg(width, height, title, "".join(body))


def record_map(points: list[tuple[float, float, bool]], records: list[dict[str, str]], key: str, title: str,
               width: int = 560, height: int = 440) -> str:  # fmt: skip
    """A 2-D map of records (chosen ones marked) with a panel that shows the record under the
    pointer (or keyboard focus, for the chosen ones); ``records[i]`` has ``label`` and ``text``."""
    if not points:
        return ""
    xs, ys = [p[0] for p in points], [p[1] for p in points]
    x = Scale(min(xs), max(xs), 16, width - 16)
    y = Scale(min(ys), max(ys), height - 36, 30)
    body = [f'<text x="{width / 2}" y="16" text-anchor="middle" font-weight="600">{esc(title)}</text>']
    order = sorted(range(len(points)), key=lambda i: points[i][2])  # chosen drawn last, on top
    for i in order:
        px, py, chosen = points[i]
        if chosen:
            body.append(f'<circle class="chosen" data-i="{i}" tabindex="0" cx="{x(px):.1f}" cy="{y(py):.1f}" r="4.5" '
                        f'fill="{PALETTE[4]}" stroke="#fff" stroke-width="0.8"/>')  # fmt: skip
        else:
            body.append(f'<circle class="other" data-i="{i}" cx="{x(px):.1f}" cy="{y(py):.1f}" r="3" fill="{GREY}" '
                        'fill-opacity="0.55"/>')  # fmt: skip
    body.append(f'<circle cx="24" cy="{height - 14}" r="4.5" fill="{PALETTE[4]}"/>'
                f'<text x="32" y="{height - 10}">chosen</text>'
                f'<circle cx="100" cy="{height - 14}" r="3" fill="{GREY}"/><text x="108" y="{height - 10}">'
                "not chosen</text>")  # fmt: skip
    svg = _svg(width, height, title, "".join(body), f' data-records="{key}-data" data-panel="{key}-panel"')
    return (f'<div class="figs">{svg}<div id="{key}-panel" class="panel" aria-live="polite" style="flex:1;'
            'min-width:240px"><p class="muted">Point at a dot (or tab to a chosen one) to read its record.</p></div>'
            f'</div><script type="application/json" id="{key}-data">{script_json(records)}</script>')  # fmt: skip
