"""Self-contained HTML documents: one file, CSS and a few lines of JavaScript inline, pictures embedded as PNG.

One escaping rule, markupsafe's: every value put into a page is escaped unless it is :class:`Markup` (HTML made by
the functions here, or marked as HTML where it is written). So a caption, a note, a card or a table cell taken from a
file name, a config value or an error message shows as text, whatever characters it holds; HTML written here is
built with ``Markup(...).format(...)`` or ``esc``, which escape what is inserted.

Nothing is fetched from anywhere (the machines are often offline, and a report is mailed and archived): a
Content-Security-Policy in the page forbids every external request. Table cells carry their exact values in
``data-value`` (and ``data-sd``) attributes, so tools and tests read the numbers without parsing the rounded text.
"""

from __future__ import annotations

import base64
import math
import struct
import time
import traceback
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from markupsafe import Markup, escape

from dqlray.formatting import fmt, fmt_sd
from dqlray.metrics import finite_or_none
from dqlray.runinfo import json_ready

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"

CSP = "default-src 'none'; img-src data:; style-src 'unsafe-inline'; script-src 'unsafe-inline'"

CSS = """
:root{--fg:#1b2230;--muted:#5d6677;--line:#e2e6ee;--bg:#f4f6fa;--card:#fff;--accent:#1f4e9c;--accent-bg:#edf2fb;
--good:#177245;--bad:#b3261e;--warn:#8a6100;--warn-bg:#fff7e0;--head:#0f1b2d}
*{box-sizing:border-box}
html{scroll-behavior:smooth;scroll-padding-top:52px}
body{margin:0;color:var(--fg);background:var(--bg);font:15px/1.55 system-ui,-apple-system,"Segoe UI",Roboto,
"Helvetica Neue","Liberation Sans","DejaVu Sans",Arial,sans-serif;-webkit-font-smoothing:antialiased}
.wrap{max-width:1200px;margin:0 auto;padding:0 28px}
header.top{background:var(--head);color:#fff;padding:30px 0 24px}
header.top .kind{font-size:12px;letter-spacing:.12em;text-transform:uppercase;color:#8fb3e3;font-weight:600}
header.top h1{font-size:28px;line-height:1.2;margin:4px 0 8px;font-weight:650;word-break:break-word}
header.top .sub{color:#c3cde0;font-size:14px}
header.top .down{color:#ff9b8f;font-weight:600}
header.top code{background:rgba(255,255,255,.08);color:#dfe7f5}
header.top .sub span+span:before{content:"\\00b7";margin:0 8px;color:#6f7f9c}
nav.toc{position:sticky;top:0;z-index:10;background:rgba(255,255,255,.96);border-bottom:1px solid var(--line)}
nav.toc .wrap{display:flex;flex-wrap:wrap;gap:2px}
nav.toc a{padding:11px 12px;color:var(--muted);text-decoration:none;font-size:14px;font-weight:500}
nav.toc a:hover{color:var(--accent)}
main{padding:8px 0 12px}
section{background:var(--card);border:1px solid var(--line);border-radius:12px;padding:22px 26px;margin:20px 0;
box-shadow:0 1px 2px rgba(16,24,40,.04)}
h2{font-size:20px;margin:0 0 6px;font-weight:650}
h3{font-size:15px;margin:18px 0 8px;font-weight:650;color:#2b3446}
p.lead{color:var(--muted);margin:0 0 14px;max-width:900px}
.cards{display:grid;grid-template-columns:repeat(auto-fit,minmax(180px,1fr));gap:12px;margin:4px 0 6px}
.card{border:1px solid var(--line);border-radius:10px;padding:12px 16px;background:#fafbfd}
.card .label{font-size:12px;text-transform:uppercase;letter-spacing:.05em;color:var(--muted);font-weight:600}
.card .value{font-size:26px;font-weight:650;font-variant-numeric:tabular-nums;margin:2px 0;white-space:nowrap}
.card .value .sd{font-size:14px}
.card .cmp{font-size:13px;color:var(--muted)}
.up{color:var(--good)}.down{color:var(--bad)}
.tablewrap{overflow-x:auto;margin:6px 0 4px;border:1px solid var(--line);border-radius:8px}
table{border-collapse:collapse;width:100%;font-size:13.5px;font-variant-numeric:tabular-nums}
th,td{padding:7px 10px;text-align:right;white-space:nowrap;border-bottom:1px solid var(--line)}
tbody tr:last-child td{border-bottom:0}
th:first-child,td:first-child,th.text,td.text{text-align:left}
thead th{background:#f2f5fa;font-weight:600;color:#30394a;font-size:12.5px;vertical-align:bottom;white-space:normal;
min-width:52px}
thead th[title]{text-decoration:underline dotted #9aa3b2;text-underline-offset:3px}
tbody tr:hover td{background:#f7f9fc}
td .sd{display:block;color:var(--muted);font-size:11.5px;font-weight:400;line-height:1.2}
td .sub{display:block;color:var(--muted);font-size:11.5px;font-weight:400;line-height:1.2}
tr.agent td{background:var(--accent-bg);font-weight:600}
tr.seed td{color:var(--muted);font-size:12.5px}
tr.seed td:first-child{padding-left:28px}
tr.best td{background:#fff8db}
td.best{color:var(--good);font-weight:700}
td.mismatch{background:#fdecea;color:var(--bad);font-weight:600}
table.dense{font-size:12.5px}
table.dense th,table.dense td{padding:6px 7px}
table.sortable thead th{cursor:pointer;user-select:none}
table.sortable thead th:after{content:"\\2195";color:#b4bccb;margin-left:5px;font-size:11px}
table.sortable thead th[aria-sort=ascending]:after{content:"\\25b2";color:var(--accent)}
table.sortable thead th[aria-sort=descending]:after{content:"\\25bc";color:var(--accent)}
table.kv{table-layout:fixed}
table.kv td{white-space:normal;text-align:left;overflow-wrap:anywhere}
table.kv td:first-child{color:var(--muted);width:38%}
.grid2{display:grid;grid-template-columns:repeat(auto-fit,minmax(340px,1fr));gap:8px 22px}
.grid2>*{min-width:0}
figure{margin:14px 0 22px}
figure img{display:block;max-width:100%;height:auto;margin:0 auto;border-radius:6px}
figcaption{color:var(--muted);font-size:13.5px;margin:8px 4px 0;max-width:980px}
.note{border-left:4px solid #d9a400;background:var(--warn-bg);padding:10px 14px;border-radius:6px;margin:10px 0}
.note.info{border-color:var(--accent);background:var(--accent-bg)}
.note.error{border-color:var(--bad);background:#fdecea}
.note strong{font-weight:650}
code,pre{font-family:"DejaVu Sans Mono",ui-monospace,SFMono-Regular,Menlo,Consolas,monospace;font-size:12.5px}
code{background:#f1f4f9;padding:1px 5px;border-radius:4px;overflow-wrap:anywhere}
pre{background:#f6f8fb;border:1px solid var(--line);border-radius:8px;padding:12px 14px;overflow-x:auto}
details summary{cursor:pointer;color:var(--accent);font-weight:500;margin:6px 0}
footer{color:var(--muted);font-size:12.5px;padding:6px 0 40px}
@media print{nav.toc{display:none}section{break-inside:avoid;box-shadow:none}}
"""

# Sorting for tables with class "sortable": click (or Enter on) a header; numbers sort as numbers, blanks last.
SORT_JS = """
(function(){
  function key(row, i){
    var c = row.cells[i]; if (!c) return null;
    var v = c.getAttribute('data-value');
    if (v === null || v === '' || v === 'nan') return null;
    var n = Number(v);
    return isNaN(n) ? v.toLowerCase() : n;
  }
  function sortBy(table, i, th){
    var asc = th.getAttribute('aria-sort') !== 'ascending';
    Array.prototype.forEach.call(table.tHead.rows[0].cells, function(h){ h.removeAttribute('aria-sort'); });
    th.setAttribute('aria-sort', asc ? 'ascending' : 'descending');
    var body = table.tBodies[0];
    var rows = Array.prototype.slice.call(body.rows);
    rows.sort(function(a, b){
      var x = key(a, i), y = key(b, i);
      if (x === null) return y === null ? 0 : 1;
      if (y === null) return -1;
      if (typeof x !== typeof y) { x = String(x); y = String(y); }
      return x < y ? (asc ? -1 : 1) : x > y ? (asc ? 1 : -1) : 0;
    });
    rows.forEach(function(r){ body.appendChild(r); });
  }
  Array.prototype.forEach.call(document.querySelectorAll('table.sortable'), function(table){
    Array.prototype.forEach.call(table.tHead.rows[0].cells, function(th, i){
      th.tabIndex = 0;
      th.addEventListener('click', function(){ sortBy(table, i, th); });
      th.addEventListener('keydown', function(e){
        if (e.key === 'Enter' || e.key === ' ') { e.preventDefault(); sortBy(table, i, th); }
      });
    });
  });
})();
"""


def esc(value: Any) -> Markup:
    """``value`` as HTML: its text escaped (None as nothing), or itself when it is :class:`Markup` already."""
    return escape("" if value is None else value)


def data_value(v: Any) -> str:
    """The exact value for a ``data-value`` attribute: ``repr`` of floats (round-trips), blank when missing."""
    if hasattr(v, "item") and callable(v.item):
        v = v.item()
    if v is None:
        return ""
    if isinstance(v, bool):
        return str(v)
    if isinstance(v, float):
        return repr(v) if math.isfinite(v) else ""
    return str(v)


# ------------------------------------------------------------------------------------------------------ tables


@dataclass(frozen=True)
class Column:
    """A table column: ``key`` into each row's values, a header label, a format kind, and a tooltip."""

    key: str
    label: str
    kind: str = "general"
    help: str = ""
    better: int = 0  # +1/-1: the best value among competing rows is highlighted


@dataclass
class Row:
    """A table row: values by column key, optional spreads (shown as ``± sd``), a ``data-row`` id and a CSS class."""

    key: str
    values: dict[str, Any]
    sd: dict[str, Any] = field(default_factory=dict)
    cls: str = ""
    compete: bool = True  # takes part in best-value highlighting
    cell_cls: dict[str, str] = field(default_factory=dict)
    sub: dict[str, str] = field(default_factory=dict)  # a second, smaller line of text under a cell's value


def render_table(name: str, columns: Sequence[Column], rows: Sequence[Row], *, sortable: bool = False) -> Markup:
    """An HTML table whose cells carry ``data-key``, ``data-value`` (exact) and ``data-sd``; rows ``data-row``."""
    best: dict[str, float] = {}
    for c in columns:
        if c.better:
            vals = [finite_or_none(r.values.get(c.key)) for r in rows if r.compete]
            vals = [v for v in vals if v is not None]
            if len(vals) > 1:
                best[c.key] = max(vals) if c.better > 0 else min(vals)
    cls = " ".join(c for c in ("sortable" if sortable else "", "dense" if len(columns) > 12 else "") if c)
    out = [Markup('<div class="tablewrap"><table data-table="{}" class="{}"><thead><tr>').format(name, cls)]
    for c in columns:
        title = Markup(' title="{}"').format(c.help) if c.help else ""
        tcls = Markup(' class="text"') if c.kind in ("text", "bool") else ""
        label = Markup("_<wbr>").join(c.label.split("_"))  # long parameter names may break after an underscore
        out.append(Markup('<th data-key="{}"{}{}>{}</th>').format(c.key, title, tcls, label))
    out.append(Markup("</tr></thead><tbody>"))
    for r in rows:
        rcls = Markup(' class="{}"').format(r.cls) if r.cls else ""
        out.append(Markup('<tr data-row="{}"{}>').format(r.key, rcls))
        for c in columns:
            v = r.values.get(c.key)
            sd = r.sd.get(c.key)
            text = esc(fmt(v, c.kind))
            sub = r.sub.get(c.key)
            if sub:
                text += Markup('<span class="sub">{}</span>').format(sub)
            attrs = Markup(' data-key="{}" data-value="{}"').format(c.key, data_value(v))
            if sd is not None:
                attrs += Markup(' data-sd="{}"').format(data_value(sd))
                s = fmt_sd(sd, c.kind)
                if s:
                    text += Markup('<span class="sd">{}</span>').format(s)
            classes = []
            if c.kind in ("text", "bool"):
                classes.append("text")
            if c.key in best and r.compete and finite_or_none(v) == best[c.key]:
                classes.append("best")
            if c.key in r.cell_cls:
                classes.append(r.cell_cls[c.key])
            if classes:
                attrs += Markup(' class="{}"').format(" ".join(classes))
            out.append(Markup("<td{}>{}</td>").format(attrs, text))
        out.append(Markup("</tr>"))
    out.append(Markup("</tbody></table></div>"))
    return Markup("").join(out)


def table_records(columns: Sequence[Column], rows: Sequence[Row]) -> list[dict[str, Any]]:
    """The table as plain records (``<key>_sd`` next to a value with a spread), for CSV and JSON."""
    recs = []
    for r in rows:
        rec: dict[str, Any] = {"row": r.key}
        for c in columns:
            rec[c.key] = json_ready(r.values.get(c.key))
            if c.key in r.sd:
                rec[f"{c.key}_sd"] = json_ready(r.sd[c.key])
        recs.append(rec)
    return recs


def kv_table(items: Iterable[tuple[str, Any]], name: str = "") -> Markup:
    """A two-column key/value table (values escaped unless :class:`Markup`)."""
    attr = Markup(' data-table="{}"').format(name) if name else ""
    rows = Markup("").join(Markup('<tr><td>{}</td><td data-key="{}">{}</td></tr>').format(k, k, v) for k, v in items)
    return Markup('<div class="tablewrap"><table class="kv"{}><tbody>{}</tbody></table></div>').format(attr, rows)


# ----------------------------------------------------------------------------------------------------- figures


def png_size(data: bytes) -> tuple[int, int]:
    """Width and height of a PNG from its IHDR chunk (raises ValueError when ``data`` is not a PNG)."""
    if data[:8] != PNG_SIGNATURE or data[12:16] != b"IHDR":
        raise ValueError("not a PNG file")
    return struct.unpack(">II", data[16:24])


def figure(png: Path, caption: str = "", *, alt: str = "", scale: float = 1.5) -> Markup:
    """A ``<figure>`` with the PNG embedded as base64 (shown at ``1/scale`` of its pixel size: sharp on HiDPI).

    ``caption`` is text, or :class:`Markup`; ``alt`` (default: the caption's text) is always text.
    """
    data = Path(png).read_bytes()
    w, h = png_size(data)
    b64 = base64.b64encode(data).decode("ascii")
    cap = Markup("<figcaption>{}</figcaption>").format(caption) if caption else ""
    alt = alt or (caption.striptags() if isinstance(caption, Markup) else caption)
    return Markup('<figure data-png="{}"><img alt="{}" width="{}" height="{}" src="data:image/png;base64,{}">{}'
                  "</figure>").format(Path(png).name, str(alt), round(w / scale), round(h / scale), b64, cap)


def note(text: str, kind: str = "warn", title: str = "") -> Markup:
    """A highlighted note: ``warn`` (yellow), ``info`` (blue) or ``error`` (red); ``text`` is text or Markup."""
    head = Markup("<strong>{}</strong> ").format(title) if title else ""
    return Markup('<div class="note {}" data-note="{}">{}{}</div>').format(kind, kind, head, text)


def cards(items: Iterable[tuple[str, str, str]]) -> Markup:
    """Headline numbers: (label, value, comparison) each; value and comparison are text or Markup."""
    card = Markup('<div class="card"><div class="label">{}</div><div class="value">{}</div><div class="cmp">{}</div>'
                  "</div>")
    return Markup('<div class="cards">{}</div>').format(Markup("").join(card.format(*item) for item in items))


# ------------------------------------------------------------------------------------------------------ pages


@dataclass(frozen=True)
class Report:
    """A written report: the HTML file, the equity-curve PNG (the picture for a chat message), every file."""

    html: Path
    equity_png: Path | None
    images: dict[str, Path]
    tables: dict[str, Path]
    warnings: tuple[str, ...]
    kind: str  # "run", "sweep", "walk_forward" or "comparison"


class Document:
    """Collects the sections of one report; a section that fails becomes a red note instead of failing the report."""

    def __init__(self, kind: str, title: str, subtitle: Sequence[str] = ()) -> None:
        self.kind = kind
        self.title = title
        self.subtitle = list(subtitle)
        self.sections: list[tuple[str, str, Markup]] = []
        self.warnings: list[str] = []

    def add(self, sid: str, title: str, build: Callable[[], Markup], lead: str = "") -> None:
        """Add a section whose body ``build()`` returns; errors are caught, shown and recorded in ``warnings``.

        The body, like ``lead``, is escaped unless it is :class:`Markup`.
        """
        try:
            body = esc(build())
        except Exception as e:  # noqa: BLE001 - a report with one broken chart beats no report after a long run
            self.warnings.append(f"{title}: {type(e).__name__}: {e}")
            tb = "".join(traceback.format_exception_only(type(e), e)).strip()
            body = note(Markup("This section could not be built: <code>{}</code>").format(tb), "error")
        if lead:
            body = Markup('<p class="lead">{}</p>').format(lead) + body
        self.sections.append((sid, title, body))

    def render(self) -> str:
        """The whole page."""
        nav = Markup("").join(Markup('<a href="#{}">{}</a>').format(sid, t) for sid, t, _ in self.sections)
        secs = Markup("").join(Markup('<section id="{}"><h2>{}</h2>{}</section>').format(sid, t, body)
                               for sid, t, body in self.sections)
        sub = Markup("").join(Markup("<span>{}</span>").format(s) for s in self.subtitle)
        kind = {"run": "Single run", "sweep": "Hyperparameter sweep", "comparison": "Comparison",
                "walk-forward": "Walk-forward"}.get(self.kind, "")
        from dqlray import __version__

        return (
            "<!DOCTYPE html>\n"
            '<html lang="en"><head><meta charset="utf-8">'
            f'<meta http-equiv="Content-Security-Policy" content="{CSP}">'
            '<meta name="viewport" content="width=device-width, initial-scale=1">'
            f'<meta name="generator" content="dqlray {esc(__version__)}">'
            f"<title>{esc(self.title)} · dqlray</title><style>{CSS}</style></head><body>"
            f'<header class="top"><div class="wrap"><div class="kind">{esc(kind)} report</div>'
            f"<h1>{esc(self.title)}</h1><div class=\"sub\">{sub}</div></div></header>"
            f'<nav class="toc"><div class="wrap">{nav}</div></nav>'
            f'<main class="wrap">{secs}</main>'
            f'<footer class="wrap">Generated by dqlray {esc(__version__)} on {esc(time.strftime("%Y-%m-%d %H:%M %Z"))}. '
            "One self-contained file: pictures embedded, nothing loaded from the network. The pictures (PNG) and "
            "tables (CSV, JSON) are also saved alongside it.</footer>"
            f"<script>{SORT_JS}</script></body></html>\n"
        )


