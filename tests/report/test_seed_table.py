"""``qbert.report.seed_table``: per-seed values and Δs side by side from committed reports'
``summary.json``, each seed against its own start."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from qbert.report.seed_table import collect, deltas, main, markdown

ROOT = Path(__file__).resolve().parents[2]


def row(method: str, w_bits: str, seeds: list[int], values: list[float], groups: int | None = 128, paper=None,
        setting: str = "") -> dict:
    return {"method": method, "w_bits": w_bits, "e_bits": 8, "a_bits": 8, "groups": groups, "seeds": seeds,
            "values": values, "paper": paper, "setting": setting}


def write_report(folder: Path, rows: list[dict]) -> Path:
    folder.mkdir(parents=True)
    table = {"experiment": "qbert_sst2", "task": "sst2", "model": "minilm", "metric": "dev/accuracy", "rows": rows}
    (folder / "summary.json").write_text(json.dumps({"tables": [table]}))
    return folder


def test_each_seed_is_measured_against_its_own_start(tmp_path):
    first = write_report(tmp_path / "s1", [row("Baseline", "32", [1], [90.0], None),
                                           row("Q-BERT", "4", [1], [89.0], paper={"value": 92.66, "baseline": 93.0}),
                                           row("DirectQ", "4", [], [], 1)])  # planned, run later
    second = write_report(tmp_path / "s2", [row("Baseline", "32", [2], [88.0], None),
                                            row("DirectQ", "4", [2], [80.0], 1), row("Q-BERT", "4", [2], [85.0])])
    tables = collect([first, second])
    rows = tables[("sst2", "minilm", "dev/accuracy")]
    d = deltas(rows)
    assert d[("Q-BERT", "4", 8, 8, 128, "")] == pytest.approx({1: -1.0, 2: -3.0})
    text = markdown(tables)
    assert "| Q-BERT 4 | 89.00 (−1.00) | 85.00 (−3.00) | −2.00 | 1.41 | 2 | −0.34 |" in text
    assert "| DirectQ 4 |  | 80.00 (−8.00) | −8.00 |  | 1 |  |" in text
    assert text.index("Q-BERT 4") < text.index("DirectQ 4")  # the first report's order, planned rows included


def test_rows_a_report_tells_apart_by_a_setting_stay_apart(tmp_path):
    report = write_report(tmp_path / "r", [row("Baseline", "32", [1], [94.0], None),
                                           row("Q-BERT", "8", [1], [93.5], setting="quant.lr=3e-05"),
                                           row("Q-BERT", "8", [1], [93.0], setting="quant.lr=1e-05")])
    text = markdown(collect([report]))
    assert "| Q-BERT 8 (quant.lr=3e-05) | 93.50 (−0.50) |" in text and "| Q-BERT 8 (quant.lr=1e-05) | 93.00 (−1.00) |" in text


def test_one_seed_with_two_values_or_without_a_start_is_refused(tmp_path, capsys):
    a = write_report(tmp_path / "a", [row("Baseline", "32", [1], [90.0], None), row("Q-BERT", "4", [1], [89.0])])
    b = write_report(tmp_path / "b", [row("Q-BERT", "4", [1], [88.0])])
    assert main([str(a), str(b)]) == 2
    err = capsys.readouterr().err
    assert "seed 1" in err and str(a) in err and str(b) in err
    c = write_report(tmp_path / "c", [row("Q-BERT", "4", [2], [88.0])])
    assert main([str(a), str(c)]) == 2
    assert "no Baseline" in capsys.readouterr().err
    assert main([str(tmp_path)]) == 2 and "summary.json" in capsys.readouterr().err


def test_the_committed_sst2_reports_give_the_readmes_three_seed_means():
    results = ROOT / "experiments" / "results"
    reports = [results / n for n in ("qbert_sst2_full_amx_cpu", "qbert_sst2_full_amx_cpu_part2",
                                     "qbert_sst2_full_amx_cpu_seed2", "qbert_sst2_full_amx_cpu_seed3")]
    text = markdown(collect(reports))
    readme = (ROOT / "README.md").read_text()
    checked = 0
    for line in text.splitlines():
        if line.startswith("| Q-BERT 3 ") or line.startswith("| Q-BERT MP 2/3 "):
            cells = [c.strip() for c in line.strip("|").split("|")]
            # README: | Q-BERT 3 | 87.73 (−1.49) | 87.61 (−1.38) | 86.70 (−2.52) | −1.80 ± 0.63 | −0.46 |
            assert f"| {cells[0]} | {cells[1]} | {cells[2]} | {cells[3]} | {cells[4]} ± {cells[5]} | {cells[7]} |" in readme
            checked += 1
    assert checked == 2
