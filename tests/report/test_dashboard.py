"""The HTML dashboard writer: escaping, formatting, sort values, embedded images, atomic write, offline."""

from __future__ import annotations

import base64
import re
import struct
import zlib
from html.parser import HTMLParser
from pathlib import Path

import pytest

from qbert.report.dashboard import Section, Table, format_cell, render_dashboard, write_dashboard


def tiny_png(width: int = 2, height: int = 1, rgb: tuple[int, int, int] = (200, 30, 30)) -> bytes:
    """A valid RGB PNG built by hand (signature, IHDR, IDAT, IEND)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    raw = b"".join(b"\x00" + bytes(rgb) * width for _ in range(height))
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(raw))
            + chunk(b"IEND", b""))


class Cells(HTMLParser):
    """Collects every <td>/<th> (attributes and text) and every <img>/<a>/<link>/<script> reference."""

    def __init__(self):
        super().__init__()
        self.cells: list[tuple[str, dict, str]] = []
        self.refs: list[tuple[str, str, str]] = []
        self._open: tuple[str, dict, list[str]] | None = None

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag in ("td", "th"):
            self._open = (tag, attrs, [])
        for name in ("src", "href"):
            if name in attrs:
                self.refs.append((tag, name, attrs[name]))

    def handle_data(self, data):
        if self._open is not None:
            self._open[2].append(data)

    def handle_endtag(self, tag):
        if self._open is not None and tag == self._open[0]:
            self.cells.append((tag, self._open[1], "".join(self._open[2])))
            self._open = None


def parse(page: str) -> Cells:
    parser = Cells()
    parser.feed(page)
    return parser


def table(**kw) -> Table:
    base = dict(caption="SST-2 dev accuracy", columns=["method", "bits", "acc", "delta"],
                rows=[["fp32", 32, 91.234, "+0.00"], ["<script>alert(1)</script>", 4, None, "-1.50"],
                      ["q&a \"x\"", 2, 87.0, "+1.23"]])
    base.update(kw)
    return Table(**base)


def test_cells_are_escaped_and_numbers_formatted():
    page = render_dashboard("T <b>", [Section("S & co", notes=["a < b"], tables=[table()])])
    assert "<script>alert(1)" not in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert "<title>T &lt;b&gt;</title>" in page and "a &lt; b" in page and "S &amp; co" in page
    tds = [(a, text) for tag, a, text in parse(page).cells if tag == "td"]
    texts = [text for _, text in tds]
    assert texts[:4] == ["fp32", "32", "91.23", "+0.00"]
    assert texts[4] == "<script>alert(1)</script>"  # the parser unescapes: shown as text
    assert texts[8] == 'q&a "x"' and texts[10] == "87.00"
    headers = [(a["data-col"], text) for tag, a, text in parse(page).cells if tag == "th"]
    assert headers == [("0", "method"), ("1", "bits"), ("2", "acc"), ("3", "delta")]


def test_data_value_holds_the_raw_number():
    page = render_dashboard("t", [Section("s", tables=[table(digits=1)])])
    tds = [a for tag, a, _ in parse(page).cells if tag == "td"]
    assert "data-value" not in tds[0]  # text
    assert float(tds[1]["data-value"]) == 32 and float(tds[2]["data-value"]) == 91.234  # not 91.2
    assert float(tds[3]["data-value"]) == 0.0 and float(tds[7]["data-value"]) == -1.5
    assert float(tds[11]["data-value"]) == 1.23  # "+1.23" deltas sort as numbers


def test_none_cells_are_blank_and_marked_empty():
    page = render_dashboard("t", [Section("s", tables=[table()])])
    acc_of_script_row = [a for tag, a, text in parse(page).cells if tag == "td"][6]
    assert acc_of_script_row.get("data-empty") == "1" and "data-value" not in acc_of_script_row
    assert '<td data-col="2" data-empty="1" class="empty"></td>' in page


@pytest.mark.parametrize("value,digits,text,number", [
    (None, 2, "", None), (3, 2, "3", 3.0), (-0.5, 3, "-0.500", -0.5), (1 / 3, 0, "0", 1 / 3),
    (float("nan"), 2, "nan", None), (float("inf"), 2, "inf", float("inf")), (True, 2, "True", None),
    ("+1.23", 2, "+1.23", 1.23), ("-4", 2, "-4", -4.0), ("83.6 ± 0.4", 2, "83.6 ± 0.4", 83.6),
    ("12.5 %", 2, "12.5 %", 12.5), ("W4A8", 2, "W4A8", None), ("2/4", 2, "2/4", None), ("", 2, "", None),
])
def test_format_cell(value, digits, text, number):
    assert format_cell(value, digits) == (text, number)


def test_row_classes_and_shape_checks():
    page = render_dashboard("t", [Section("s", tables=[table(row_classes=["paper", "failed", ""])])])
    assert re.search(r'<tr data-index="0" class="paper">', page)
    assert re.search(r'<tr data-index="1" class="failed">', page)
    assert '<tr data-index="2">' in page
    with pytest.raises(ValueError, match="row 1 has 2 cells"):
        Table("c", ["a", "b", "c"], [[1, 2, 3], [1, 2]])
    with pytest.raises(ValueError, match="2 row_classes for 1 rows"):
        Table("c", ["a"], [[1]], row_classes=["x", "y"])


def test_ids_toc_and_sections_are_stable(tmp_path):
    sections = [Section("Q-BERT / SST-2", tables=[table(), table()]), Section("Q-BERT / SST-2"), Section("!!")]
    page = render_dashboard("t", sections, subtitle="sweep of 2024")
    ids = re.findall(r'<section class="qbert-section" id="([^"]+)"', page)
    assert ids == ["q-bert-sst-2", "q-bert-sst-2-2", "section"]
    assert re.findall(r'<table class="qbert-table" id="([^"]+)"', page) == [
        "q-bert-sst-2-table-0", "q-bert-sst-2-table-1"]
    toc = [href for tag, name, href in parse(page).refs if tag == "a"]
    assert toc == ["#q-bert-sst-2", "#q-bert-sst-2-2", "#section"]
    assert 'data-table="q-bert-sst-2-table-1"' in page and "sweep of 2024" in page
    assert page == render_dashboard("t", sections, subtitle="sweep of 2024")  # deterministic


def test_images_are_embedded_as_base64(tmp_path):
    pngs = [tmp_path / "acc_vs_bits.png", tmp_path / "size.png"]
    pngs[0].write_bytes(tiny_png(3, 2))
    pngs[1].write_bytes(tiny_png(1, 1, (0, 0, 255)))
    page = render_dashboard("t", [Section("plots", images=pngs)])
    srcs = [ref for tag, name, ref in parse(page).refs if tag == "img"]
    assert len(srcs) == 2
    for src, png in zip(srcs, pngs):
        prefix = "data:image/png;base64,"
        assert src.startswith(prefix)
        assert base64.b64decode(src[len(prefix):]) == png.read_bytes()
    assert "<figcaption>acc_vs_bits.png</figcaption>" in page and 'alt="size.png"' in page


def test_missing_image_fails_before_writing(tmp_path):
    out = tmp_path / "dash.html"
    missing = tmp_path / "plots" / "nope.png"
    with pytest.raises(FileNotFoundError, match="nope.png") as err:
        write_dashboard(out, "t", [Section("a", tables=[table()]), Section("b", images=[missing])])
    assert err.value.filename == str(missing)
    assert not out.exists() and list(tmp_path.iterdir()) == []


def test_non_png_bytes_and_unknown_types_are_refused(tmp_path):
    (tmp_path / "fake.png").write_text("not a png")
    (tmp_path / "plot.pdf").write_bytes(b"%PDF")
    with pytest.raises(ValueError, match="not a PNG"):
        render_dashboard("t", [Section("s", images=[tmp_path / "fake.png"])])
    with pytest.raises(ValueError, match="unsupported type"):
        render_dashboard("t", [Section("s", images=[tmp_path / "plot.pdf"])])


def test_write_is_atomic_and_replaces(tmp_path, monkeypatch):
    out = tmp_path / "sub" / "dashboard.html"
    assert write_dashboard(out, "first", [Section("s", tables=[table()])]) == out
    assert "<title>first</title>" in out.read_text(encoding="utf-8")
    # A crash while writing leaves the previous dashboard intact and no temporary file behind.
    def broken_write(self, *a, **k):
        raise OSError("disk full")
    monkeypatch.setattr(Path, "write_text", broken_write)
    with pytest.raises(OSError, match="disk full"):
        write_dashboard(out, "second", [Section("s")])
    monkeypatch.undo()
    assert "<title>first</title>" in out.read_text(encoding="utf-8")
    assert sorted(p.name for p in out.parent.iterdir()) == ["dashboard.html"]
    write_dashboard(out, "second", [Section("s")])
    assert "<title>second</title>" in out.read_text(encoding="utf-8")


def test_nothing_is_fetched_from_the_network(tmp_path):
    png = tmp_path / "p.png"
    png.write_bytes(tiny_png())
    page = render_dashboard("t", [Section("s", notes=["see https://example.com/paper"],
                                          tables=[table(rows=[["http://x.org", 1, 2.0, "+1"]])],
                                          images=[png])])
    refs = parse(page).refs
    assert refs and all(ref.startswith(("data:", "#")) for _, _, ref in refs)
    assert not re.search(r"""(src|href)\s*=\s*["']?\s*(https?:)?//""", page)
    assert "<link" not in page and "@import" not in page and "url(" not in page
    assert "default-src 'none'" in page  # the browser itself refuses any fetch
    assert page.count("<script") == 1 and "<script>\n(function" in page  # only our inline script
