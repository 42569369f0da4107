"""One self-contained HTML dashboard from tables and plots that are already computed.

The file works offline: CSS and vanilla JS are inline, images are embedded as base64 ``data:`` URIs,
and a Content-Security-Policy forbids the page from fetching anything. Every table sorts by clicking
a header (numeric-aware, empty cells last both ways, stable) and has a text filter box. Each cell
keeps its raw number in ``data-value``, so sorting never parses formatted text.

Stable hooks for tests and users: ``section.qbert-section#<slug>``, ``table.qbert-table#<slug>-table-<j>``,
``th[data-col=i]`` (``aria-sort`` = ascending | descending while sorted), ``input.qbert-filter``.
"""

from __future__ import annotations

import base64
import errno
import html
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

MIME = {".png": "image/png", ".jpg": "image/jpeg", ".jpeg": "image/jpeg", ".gif": "image/gif",
        ".svg": "image/svg+xml", ".webp": "image/webp"}
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
# A string cell that starts with a number sorts as that number: "-1", "+1.23", "83.6 %", "83.6 ± 0.4".
NUMERIC_TEXT = re.compile(r"^\s*([+\-\u2212]?(?:\d+\.?\d*|\.\d+)(?:[eE][+\-]?\d+)?)\s*(?:%|±.*|\(.*)?\s*$")


@dataclass
class Table:
    caption: str
    columns: list[str]
    rows: list[list[Any]]  # cells: str, int, float or None; floats shown with `digits` decimals
    digits: int = 2
    row_classes: list[str] | None = None  # optional CSS class per row: "failed", "paper", "best"

    def __post_init__(self):
        for i, row in enumerate(self.rows):
            if len(row) != len(self.columns):
                raise ValueError(f"table {self.caption!r}: row {i} has {len(row)} cells, "
                                 f"expected {len(self.columns)} (columns {self.columns})")
        if self.row_classes is not None and len(self.row_classes) != len(self.rows):
            raise ValueError(f"table {self.caption!r}: {len(self.row_classes)} row_classes "
                             f"for {len(self.rows)} rows")
        if self.digits < 0:
            raise ValueError(f"table {self.caption!r}: digits must be >= 0, got {self.digits}")


@dataclass
class Section:
    title: str
    notes: list[str] = field(default_factory=list)  # plain-text paragraphs (escaped)
    tables: list[Table] = field(default_factory=list)
    images: list[Path] = field(default_factory=list)  # image files to embed, captioned by file name
    markdown: str = ""  # Markdown rendered as HTML after the notes (raw HTML in it is escaped)


def format_cell(value: Any, digits: int = 2) -> tuple[str, float | None]:
    """(text shown, number to sort by); None and NaN sort as empty (number None, shown blank / "nan")."""
    if value is None:
        return "", None
    if isinstance(value, bool):  # a bool is an int to Python, not a number to a reader
        return str(value), None
    if isinstance(value, int):
        return str(value), float(value)
    if isinstance(value, float):
        if math.isnan(value):
            return "nan", None
        return (f"{value:.{digits}f}" if math.isfinite(value) else str(value)), value
    text = str(value)
    match = NUMERIC_TEXT.match(text)
    return text, (float(match.group(1).replace("\u2212", "-")) if match else None)


def _number_attr(number: float) -> str:
    if math.isinf(number):
        return "Infinity" if number > 0 else "-Infinity"
    return repr(number)


def _slug(title: str, taken: set[str]) -> str:
    base = re.sub(r"[^a-z0-9]+", "-", title.lower()).strip("-") or "section"
    slug, n = base, 2
    while slug in taken:
        slug, n = f"{base}-{n}", n + 1
    taken.add(slug)
    return slug


def _image_uri(path: Path) -> str:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(errno.ENOENT, "dashboard image not found", str(path))
    mime = MIME.get(path.suffix.lower())
    if mime is None:
        raise ValueError(f"dashboard image {path}: unsupported type {path.suffix!r} "
                         f"(supported: {', '.join(sorted(MIME))})")
    data = path.read_bytes()
    if mime == "image/png" and not data.startswith(PNG_MAGIC):
        raise ValueError(f"dashboard image {path}: not a PNG file")
    return f"data:{mime};base64,{base64.b64encode(data).decode('ascii')}"


def _table_html(table: Table, table_id: str) -> str:
    esc = html.escape
    head = "".join(
        f'<th data-col="{i}" scope="col" tabindex="0" title="click to sort">{esc(str(name))}'
        f'<span class="sort-mark" aria-hidden="true"></span></th>'
        for i, name in enumerate(table.columns))
    body = []
    for r, row in enumerate(table.rows):
        cells = []
        for i, value in enumerate(row):
            text, number = format_cell(value, table.digits)
            if number is not None:
                cells.append(f'<td data-col="{i}" data-value="{_number_attr(number)}" class="num">'
                             f'{esc(text)}</td>')
            elif value is None or (isinstance(value, float) and math.isnan(value)):
                cells.append(f'<td data-col="{i}" data-empty="1" class="empty">{esc(text)}</td>')
            else:
                cells.append(f'<td data-col="{i}">{esc(text)}</td>')
        cls = table.row_classes[r] if table.row_classes else ""
        cls_attr = f' class="{esc(cls)}"' if cls else ""
        body.append(f'<tr data-index="{r}"{cls_attr}>{"".join(cells)}</tr>')
    return (f'<div class="qbert-table-wrap">\n'
            f'<div class="qbert-table-tools"><input type="search" class="qbert-filter" '
            f'data-table="{table_id}" placeholder="filter rows" aria-label="filter rows of '
            f'{esc(table.caption)}"> <span class="qbert-count" data-table="{table_id}">'
            f'{len(table.rows)} rows</span></div>\n'
            f'<table class="qbert-table" id="{table_id}">\n<caption>{esc(table.caption)}</caption>\n'
            f'<thead><tr>{head}</tr></thead>\n<tbody>\n' + "\n".join(body) + "\n</tbody>\n</table>\n</div>")


def render_markdown_html(text: str) -> str:
    """CommonMark plus tables; HTML inside the Markdown is shown as text, never run."""
    from markdown_it import MarkdownIt
    return MarkdownIt("commonmark", {"html": False}).enable("table").render(text)


def render_dashboard(title: str, sections: list[Section], subtitle: str = "") -> str:
    """The whole page as one string. Raises before producing anything if an image is missing."""
    esc = html.escape
    taken: set[str] = set()
    toc, parts = [], []
    for section in sections:
        sid = _slug(section.title, taken)
        toc.append(f'<li><a href="#{sid}">{esc(section.title)}</a></li>')
        body = [f'<section class="qbert-section" id="{sid}">', f"<h2>{esc(section.title)}</h2>"]
        body += [f'<p class="note">{esc(note)}</p>' for note in section.notes]
        if section.markdown:
            body.append(f'<div class="qbert-markdown">{render_markdown_html(section.markdown)}</div>')
        body += [_table_html(t, f"{sid}-table-{j}") for j, t in enumerate(section.tables)]
        if section.images:
            figures = [f'<figure class="qbert-figure"><img src="{_image_uri(p)}" alt="{esc(Path(p).name)}">'
                       f"<figcaption>{esc(Path(p).name)}</figcaption></figure>" for p in section.images]
            body.append('<div class="qbert-figures">' + "\n".join(figures) + "</div>")
        body.append("</section>")
        parts.append("\n".join(body))
    sub = f'<p class="subtitle">{esc(subtitle)}</p>' if subtitle else ""
    nav = f'<nav class="qbert-toc"><h2>Contents</h2><ol>{"".join(toc)}</ol></nav>' if toc else ""
    return (f'<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
            f'<meta http-equiv="Content-Security-Policy" content="{CSP}">\n'
            f'<meta name="viewport" content="width=device-width, initial-scale=1">\n'
            f"<title>{esc(title)}</title>\n<style>{CSS}</style>\n</head>\n<body>\n"
            f"<header><h1>{esc(title)}</h1>{sub}"
            f'<p class="hint">Click a column header to sort (again to reverse); type in a box to filter rows.</p>'
            f"</header>\n{nav}\n<main>\n" + "\n".join(parts) +
            f"\n</main>\n<script>{JS}</script>\n</body>\n</html>\n")


def write_dashboard(path: Path, title: str, sections: list[Section], subtitle: str = "") -> Path:
    """Render first, then write atomically (tmp + replace): never a half dashboard on disk."""
    page = render_dashboard(title, sections, subtitle)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    try:
        tmp.write_text(page, encoding="utf-8")
        tmp.replace(path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


# Nothing may be fetched: images are data: URIs, style and script are inline.
CSP = "default-src 'none'; img-src data:; style-src 'unsafe-inline'; script-src 'unsafe-inline'"

CSS = """
body { font: 14px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; color: #1f2328;
       background: #fff; margin: 0 auto; padding: 1rem 1.5rem 3rem; max-width: 1500px; }
h1 { font-size: 1.6rem; margin: .2rem 0; } h2 { font-size: 1.25rem; margin: 1.6rem 0 .5rem;
  border-bottom: 1px solid #d0d7de; padding-bottom: .2rem; }
.subtitle { color: #57606a; margin: 0 0 .3rem; } .hint { color: #6e7781; font-size: .85rem; margin: 0; }
.qbert-toc h2 { font-size: 1rem; border: 0; margin: 1rem 0 .2rem; }
.qbert-toc ol { margin: 0; padding-left: 1.4rem; } .qbert-toc a { color: #0969da; text-decoration: none; }
.qbert-toc a:hover { text-decoration: underline; }
.note { white-space: pre-wrap; margin: .3rem 0; max-width: 90ch; }
.qbert-table-wrap { overflow-x: auto; margin: .8rem 0 1.2rem; }
.qbert-table-tools { margin-bottom: .3rem; font-size: .85rem; color: #57606a; }
.qbert-filter { font: inherit; padding: .15rem .4rem; border: 1px solid #d0d7de; border-radius: 4px; width: 16rem; }
table.qbert-table { border-collapse: collapse; font-size: .9rem; font-variant-numeric: tabular-nums; }
.qbert-table caption { caption-side: top; text-align: left; font-weight: 600; padding: .2rem 0; }
.qbert-table th, .qbert-table td { border: 1px solid #d0d7de; padding: .2rem .55rem; }
.qbert-table th { background: #f6f8fa; cursor: pointer; user-select: none; text-align: left;
  vertical-align: bottom; min-width: 3.5em; max-width: 9em; }
.qbert-table th:hover { background: #eaeef2; } .sort-mark { margin-left: .25rem; font-size: .75em; color: #57606a; }
.qbert-table td.num { text-align: right; } .qbert-table td.empty { background: #fbfbfb; }
.qbert-table tbody tr:nth-child(even) { background: #fafbfc; } .qbert-table tbody tr:hover { background: #fff8c5; }
.qbert-table tr.failed td { color: #b42318; background: #fef0ee; }
.qbert-table tr.paper td { color: #6e7781; font-style: italic; }
.qbert-table tr.best td { font-weight: 600; }
.qbert-figures { display: flex; flex-wrap: wrap; gap: 1rem; }
.qbert-figure { margin: 0; } .qbert-figure img { max-width: 100%; height: auto; border: 1px solid #eaeef2; }
.qbert-markdown { max-width: 110ch; overflow-x: auto; } .qbert-markdown code { background: #f6f8fa; padding: 0 .2em; }
.qbert-markdown pre { background: #f6f8fa; padding: .5rem; overflow-x: auto; }
.qbert-markdown table { border-collapse: collapse; font-size: .85rem; }
.qbert-markdown th, .qbert-markdown td { border: 1px solid #d0d7de; padding: .15rem .45rem; }
.qbert-figure figcaption { font-size: .8rem; color: #57606a; text-align: center; }
"""

JS = """
(function () {
  "use strict";
  // Sort key of a cell: 0 = number (from data-value), 1 = text, 2 = empty (always last).
  function key(td) {
    if (!td || td.hasAttribute("data-empty")) return [2, 0, ""];
    if (td.hasAttribute("data-value")) return [0, parseFloat(td.getAttribute("data-value")), ""];
    var text = td.textContent.trim();
    return text === "" ? [2, 0, ""] : [1, 0, text];
  }
  function compare(a, b, dir) {
    if (a.k[0] !== b.k[0]) return a.k[0] - b.k[0];          // numbers, then text, then empty
    var c = 0;
    if (a.k[0] === 0) c = a.k[1] < b.k[1] ? -1 : (a.k[1] > b.k[1] ? 1 : 0);
    else if (a.k[0] === 1) c = a.k[2].localeCompare(b.k[2], undefined, {numeric: true});
    return c !== 0 ? dir * c : a.i - b.i;                  // stable: ties keep their current order
  }
  function sortBy(table, th) {
    var col = th.getAttribute("data-col");
    var dir = th.getAttribute("aria-sort") === "ascending" ? -1 : 1;
    var tbody = table.tBodies[0];
    var rows = Array.prototype.map.call(tbody.rows, function (tr, i) {
      return {tr: tr, i: i, k: key(tr.querySelector('td[data-col="' + col + '"]'))};
    });
    rows.sort(function (a, b) { return compare(a, b, dir); });
    rows.forEach(function (r) { tbody.appendChild(r.tr); });
    Array.prototype.forEach.call(table.tHead.rows[0].cells, function (h) {
      h.removeAttribute("aria-sort");
      h.querySelector(".sort-mark").textContent = "";
    });
    th.setAttribute("aria-sort", dir === 1 ? "ascending" : "descending");
    th.querySelector(".sort-mark").textContent = dir === 1 ? "\\u25B2" : "\\u25BC";
  }
  function filter(input) {
    var table = document.getElementById(input.getAttribute("data-table"));
    var query = input.value.trim().toLowerCase(), shown = 0, rows = table.tBodies[0].rows;
    Array.prototype.forEach.call(rows, function (tr) {
      var hit = query === "" || tr.textContent.toLowerCase().indexOf(query) !== -1;
      tr.hidden = !hit; if (hit) shown += 1;
    });
    var count = document.querySelector('.qbert-count[data-table="' + table.id + '"]');
    if (count) count.textContent = query === "" ? rows.length + " rows" : shown + " / " + rows.length + " rows";
  }
  document.querySelectorAll("table.qbert-table").forEach(function (table) {
    table.querySelectorAll("thead th").forEach(function (th) {
      th.addEventListener("click", function () { sortBy(table, th); });
      th.addEventListener("keydown", function (e) {
        if (e.key === "Enter" || e.key === " ") { e.preventDefault(); sortBy(table, th); }
      });
    });
  });
  document.querySelectorAll("input.qbert-filter").forEach(function (input) {
    input.addEventListener("input", function () { filter(input); });
  });
  document.documentElement.setAttribute("data-qbert-ready", "1");
})();
"""
