"""``python -m qbert.report.seed_table <report> [<report> ...]``: one table per task with each
seed's value and Δ side by side and the mean of the Δs, from the ``summary.json`` of committed
``qbert-report`` folders.

Each seed's Δ is against that seed's own full-precision start (the Baseline row's value for the
same seed), so seeds run on different starts, or on different machines, are compared by their
drops. It reads only ``summary.json``, so it also combines reports made before reports carried
their job archive (``jobs/``), whose sweep folders are gone: ``qbert-report <old> <new>`` cannot
merge those, this can. A row is one method at one width, group count, embedding / activation
width and the setting a report tells rows apart by (as the report names them); a seed found in
two reports with different values, or a seed whose start is in none of them, is an error naming
the reports.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from dataclasses import dataclass, field
from pathlib import Path

from qbert.report.tables import row_label

BASELINE = "Baseline"


@dataclass
class SeedRow:
    """One table row across the reports: value and source report per seed."""
    method: str
    w_bits: str
    groups: int | None
    setting: str
    paper_delta: float | None = None
    values: dict[int, tuple[float, str]] = field(default_factory=dict)


def _row_key(row: dict) -> tuple:
    return row["method"], str(row["w_bits"]), row.get("e_bits"), row.get("a_bits"), row.get("groups"), row.get("setting") or ""


def _paper_delta(row: dict) -> float | None:
    paper = row.get("paper") or {}
    if row["method"] == BASELINE or paper.get("value") is None or paper.get("baseline") is None:
        return None
    return paper["value"] - paper["baseline"]


def labels(rows: dict[tuple, SeedRow]) -> dict[tuple, str]:
    """"Q-BERT 4", "Q-BERT MP 2/3"; with ", 128 groups" where one method and width come in several
    group counts (MKQ's two weight granularities, the group-count study)."""
    group_counts: dict[tuple[str, str], set] = {}
    for row in rows.values():
        group_counts.setdefault((row.method, row.w_bits), set()).add(row.groups)
    out = {}
    for key, row in rows.items():
        if row.method == BASELINE:
            out[key] = BASELINE
            continue
        label = row_label(row.method, row.w_bits)
        if row.groups and len(group_counts[(row.method, row.w_bits)]) > 1:
            label = f"{label}, {row.groups} group{'s' if row.groups != 1 else ''}"
        out[key] = f"{label} ({row.setting})" if row.setting else label
    return out


def collect(reports: list[Path]) -> dict[tuple[str, str, str], dict[tuple, SeedRow]]:
    """{(task, model, metric): {row key: SeedRow}}, rows in the order they first appear."""
    tables: dict[tuple[str, str, str], dict[tuple, SeedRow]] = {}
    for report in reports:
        path = report / "summary.json"
        if not path.is_file():
            raise FileNotFoundError(f"{report}: no summary.json (not a qbert-report folder)")
        for table in json.loads(path.read_text())["tables"]:
            rows = tables.setdefault((table["task"], table["model"], table["metric"]), {})
            for row in table["rows"]:  # planned rows too: they hold the report's row order
                entry = rows.setdefault(_row_key(row), SeedRow(row["method"], str(row["w_bits"]), row.get("groups"),
                                                               row.get("setting") or "", _paper_delta(row)))
                for seed, value in zip(row["seeds"], row["values"]):
                    known = entry.values.get(seed)
                    if known and abs(known[0] - value) > 1e-9:
                        raise ValueError(f"{row['method']} {row['w_bits']}, seed {seed}: {known[0]:.2f} in {known[1]} "
                                         f"but {value:.2f} in {report}: two runs of one seed; pass one of the reports")
                    entry.values[seed] = (value, str(report))
    return tables


def deltas(rows: dict[tuple, SeedRow]) -> dict[tuple, dict[int, float]]:
    """Each row's Δ per seed against the Baseline row of the same seed."""
    starts = next((r.values for k, r in rows.items() if k[0] == BASELINE), {})
    out = {}
    for key, row in rows.items():
        if key[0] == BASELINE or not row.values:
            continue
        missing = sorted(set(row.values) - set(starts))
        if missing:
            raise ValueError(f"{row.method} {row.w_bits}: no Baseline (full-precision start) for seed(s) {missing} in the reports "
                             f"({', '.join(sorted({src for _, src in row.values.values()}))})")
        out[key] = {seed: value - starts[seed][0] for seed, (value, _) in row.values.items()}
    return out


def _signed(value: float) -> str:
    return f"{value:+.2f}".replace("-", "−")


def markdown(tables: dict[tuple[str, str, str], dict[tuple, SeedRow]]) -> str:
    parts = []
    for (task, model, metric), rows in tables.items():
        seeds = sorted({s for r in rows.values() for s in r.values})
        by_key, names = deltas(rows), labels(rows)
        lines = [f"**{task}** / {model}: {metric}", "",
                 "| row | " + " | ".join(f"seed {s} (Δ)" for s in seeds) + " | mean Δ | std Δ | seeds | paper Δ |",
                 "|---" * (len(seeds) + 5) + "|"]
        for key, row in rows.items():
            if not row.values:
                continue  # planned in every report, run in none
            cells = []
            for s in seeds:
                if s not in row.values:
                    cells.append("")
                elif key[0] == BASELINE:
                    cells.append(f"{row.values[s][0]:.2f}")
                else:
                    cells.append(f"{row.values[s][0]:.2f} ({_signed(by_key[key][s])})")
            if key[0] == BASELINE:
                values = [v for v, _ in row.values.values()]
                summary = [f"mean {statistics.fmean(values):.2f}", "", str(len(values)), ""]
            else:
                d = list(by_key[key].values())
                summary = [_signed(statistics.fmean(d)), f"{statistics.stdev(d):.2f}" if len(d) > 1 else "",
                           str(len(d)), _signed(row.paper_delta) if row.paper_delta is not None else ""]
            lines.append(f"| {names[key]} | " + " | ".join(cells + summary) + " |")
        parts.append("\n".join(lines))
    return "\n\n".join(parts) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m qbert.report.seed_table", description=__doc__.splitlines()[0])
    parser.add_argument("reports", nargs="+", type=Path, help="qbert-report output folders (with summary.json)")
    parser.add_argument("--out", type=Path, help="also write the Markdown here")
    args = parser.parse_args(argv)
    try:
        text = markdown(collect(args.reports))
    except (FileNotFoundError, ValueError, KeyError, json.JSONDecodeError) as error:
        print(f"seed_table: error: {error}", file=sys.stderr)
        return 2
    print(text, end="")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
