"""Rows -> paper-style tables: one per (experiment, task, model), seeds averaged (mean ± std),
our Δ against our own baseline beside the paper's value and the paper's Δ against its baseline."""

from __future__ import annotations

import csv
import io
import math
import statistics
from dataclasses import dataclass, field
from typing import Optional

from qbert.data.sources import HOLDOUT
from qbert.report.paper import PaperCell, PaperNumbers
from qbert.report.rows import Row

# Paper order: baseline first, then by falling mean width; methods at one width in paper order.
METHOD_ORDER = ("Baseline", "Q8BERT", "Dynamic PTQ", "DirectQ", "Q-BERT", "Q-BERT MP", "MKQ-BERT")


def row_label(method: str, w_bits: str, setting: str = "") -> str:
    """A row by name: "Q-BERT 4", "Q-BERT MP 2/4" (a mixed row's widths read "2/4 MP" and its
    method already says MP), with the setting that tells it apart in parentheses."""
    name = f"{method} {w_bits.removesuffix(' MP')}"
    return f"{name} ({setting})" if setting else name


@dataclass
class TableRow:
    method: str
    w_bits: str
    mean_w_bits: float
    e_bits: int
    a_bits: int
    groups: Optional[int]
    values: list[float]  # one per finished seed
    seeds: list[int]
    size_wo_e_mib: Optional[float]
    family: str
    failed: list[str] = field(default_factory=list)  # "seed 2: ValueError: ..."
    states: set[str] = field(default_factory=set)  # of the seeds without a value: failed, killed, not started
    layer_bits: Optional[list[int]] = None
    config_hashes: list[str] = field(default_factory=list)
    paper: Optional[PaperCell] = None
    delta: Optional[float] = None  # mean minus our baseline's mean over the same seeds
    settings: dict = field(default_factory=dict)  # its first job's flat config (qbert.report.rows.flat_settings)
    setting: str = ""  # what tells it from rows of the same method, width and groups, e.g. "quant.lr=1e-05"

    @property
    def mean(self) -> Optional[float]:
        return statistics.fmean(self.values) if self.values else None

    @property
    def std(self) -> Optional[float]:
        return statistics.stdev(self.values) if len(self.values) >= 2 else None

    @property
    def label(self) -> str:
        return row_label(self.method, self.w_bits, self.setting)

    @property
    def method_shown(self) -> str:
        return f"{self.method} ({self.setting})" if self.setting else self.method

    def shown(self) -> str:
        if self.mean is None:
            return " / ".join(sorted(self.states)) or "failed"
        text = f"{self.mean:.2f}"
        if self.std is not None:
            text += f" ± {self.std:.2f}"
        return text + (f" (n={len(self.values)})" if len(self.values) > 1 else "")


@dataclass
class Table:
    experiment: str
    task: str
    model: str
    metric: str
    rows: list[TableRow]
    omega: dict[str, list[float]] = field(default_factory=dict)  # Hessian Ω per layer, by seed
    note: Optional[str] = None

    @property
    def key(self) -> str:
        return f"{self.experiment}_{self.task}_{self.model}".replace("/", "-")

    @property
    def failures(self) -> list[str]:
        return [f"{r.label}: {f}" for r in self.rows for f in r.failed]


def _sort_key(row: TableRow) -> tuple:
    """The paper's order: Baseline, 8, 4, 3, MP 2/4, 2, MP 2/3 — falling width, and a mixed-
    precision row after the uniform rows of the width its mean rounds down to (2/4 MP, mean 3,
    after the 3-bit rows; 2/3 MP, mean 2.5, after the 2-bit rows)."""
    base = row.method.split(" ILP")[0].split(" manual")[0].split(" (")[0].split(",")[0]
    order = METHOD_ORDER.index(base) if base in METHOD_ORDER else len(METHOD_ORDER)
    width = math.floor(row.mean_w_bits) if base == "Q-BERT MP" else row.mean_w_bits
    return (row.method != "Baseline", -width, order, row.method, row.groups or 0)


def build_tables(rows: list[Row], paper: PaperNumbers | None = None) -> list[Table]:
    groups: dict[tuple, list[Row]] = {}
    for row in rows:
        groups.setdefault((row.experiment, row.task, row.model), []).append(row)
    tables = []
    for (experiment, task, model), members in sorted(groups.items()):
        by_variant: dict[str, TableRow] = {}
        omega: dict[str, list[float]] = {}
        for r in sorted(members, key=lambda r: r.seed):
            # Baselines of several seeds are one row, whatever their start's folder.
            key = "baseline" if r.method == "Baseline" else r.variant
            t = by_variant.setdefault(key, TableRow(
                method=r.method, w_bits=r.w_bits, mean_w_bits=r.mean_w_bits, e_bits=r.e_bits, a_bits=r.a_bits,
                groups=r.groups, values=[], seeds=[], size_wo_e_mib=r.size_wo_e_mib, family=r.family,
                layer_bits=r.layer_bits, settings=r.settings))
            if r.status in NO_VALUE_STATES:
                t.failed.append(f"seed {r.seed}: {r.error}")
                t.states.add(r.status)
            elif r.seed not in t.seeds:
                t.values.append(float(r.value))
                t.seeds.append(r.seed)
                t.config_hashes.append(r.config_hash)
                t.size_wo_e_mib = t.size_wo_e_mib if t.size_wo_e_mib is not None else r.size_wo_e_mib
            if r.omega and f"seed {r.seed}" not in omega:
                omega[f"seed {r.seed}"] = r.omega
        table_rows = sorted(by_variant.values(), key=_sort_key)
        name_settings(table_rows)
        base = next((t for t in table_rows if t.method == "Baseline"), None)
        base_by_seed = dict(zip(base.seeds, base.values)) if base else {}
        families = {t.family for t in table_rows if t.method != "Baseline"}
        base_family = "qbert" if "qbert" in families or not families else sorted(families)[0]
        for t in table_rows:
            if t.mean is not None and base is not None and base.mean is not None and t.method != "Baseline":
                # against the starts of the row's own seeds: a row run on fewer seeds than the
                # baseline is not measured against a start it never had
                same = [base_by_seed[s] for s in t.seeds if s in base_by_seed]
                t.delta = t.mean - (statistics.fmean(same) if len(same) == len(t.seeds) else base.mean)
            if paper is not None:
                t.paper = paper.cell(base_family if t.method == "Baseline" else t.family, task, t.method, t.w_bits,
                                     t.groups)
        metric = next((r.metric for r in members if r.metric != "?"), "?")
        note = paper.note(base_family, task) if paper is not None else None
        if metric.startswith(f"{HOLDOUT}/"):  # a recipe-selection table: the paper scored other data
            for t in table_rows:
                t.paper = None
            note = ("scored on examples held out of the training split (data.holdout): the paper's numbers, "
                    "on its dev/test splits, do not apply")
        tables.append(Table(experiment, task, model, metric, table_rows, omega, note))
    return tables


SHOWN_SETTINGS = 4  # at most this many differing keys in a row's name; the CSV has them all


def name_settings(rows: list[TableRow]) -> None:
    """Rows of one method, width and group count that are different runs (another learning rate,
    step count, range method...) would print alike: name the config keys in which they differ.
    Every row keeps only those keys in ``settings`` (none, for a row that is alone)."""
    full = {id(t): t.settings for t in rows}
    alike: dict[tuple, list[TableRow]] = {}
    for t in rows:
        t.settings = {}
        if t.method != "Baseline":
            alike.setdefault((t.method, t.w_bits, t.groups), []).append(t)
    for members in alike.values():
        if len(members) < 2:
            continue
        keys = sorted({k for t in members for k in full[id(t)]})
        differing = [k for k in keys if len({repr(full[id(t)].get(k)) for t in members}) > 1]
        for t in members:
            t.settings = {k: full[id(t)].get(k) for k in differing}
            parts = [f"{k}={v}" for k, v in t.settings.items()]
            t.setting = ", ".join(parts[:SHOWN_SETTINGS]) + (", …" if len(parts) > SHOWN_SETTINGS else "")


# Row states of jobs that produced no value (qbert.report.rows.from_error).
NO_VALUE_STATES = ("failed", "killed", "not started")

COLUMNS = ["Method", "w-bits", "e-bits", "a-bits", "groups", "metric", "Δ vs our baseline",
           "paper", "paper Δ", "Size w/o-e (MiB)", "paper Size w/o-e (MB)", "seeds"]


def cells(t: TableRow) -> list:
    """One table row as typed cells (numbers stay numbers; None where there is nothing)."""
    return [t.method_shown, t.w_bits, t.e_bits, t.a_bits, t.groups, t.mean, t.delta,
            t.paper.value if t.paper else None, _paper_delta(t),
            t.size_wo_e_mib, t.paper.size_mb if t.paper else None, ",".join(map(str, t.seeds))]


def _paper_delta(t: TableRow) -> Optional[float]:
    return t.paper.delta if t.paper and t.method != "Baseline" else None


def markdown(table: Table) -> str:
    head = [f"**{table.task}** / {table.model} / experiment `{table.experiment}`: {table.metric}"]
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    for t in table.rows:
        c = cells(t)
        shown = [c[0], c[1], c[2], c[3], "" if c[4] is None else c[4], t.shown(),
                 "" if t.delta is None else f"{t.delta:+.2f}",
                 "" if c[7] is None else f"{c[7]:.2f}", "" if c[8] is None else f"{c[8]:+.2f}",
                 "" if c[9] is None else f"{c[9]:.2f}", "" if c[10] is None else f"{c[10]:g}", c[11]]
        lines.append("| " + " | ".join(map(str, shown)) + " |")
    tail = [f"Failed: {f}" for f in table.failures]
    if table.note:
        tail.append(f"Note: {table.note}")
    return "\n".join(head + [""] + lines + ([""] + tail if tail else []))


def to_csv(table: Table) -> str:
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(["experiment", "task", "model", "metric_name", "method", "w_bits", "e_bits", "a_bits",
                     "groups", "mean", "std", "n", "delta_vs_baseline", "paper", "paper_delta",
                     "size_wo_e_mib", "paper_size_mb", "seeds", "layer_bits", "failed", "config_hashes", "setting"])
    for t in table.rows:
        writer.writerow([table.experiment, table.task, table.model, table.metric, t.method, t.w_bits,
                         t.e_bits, t.a_bits, t.groups, t.mean, t.std, len(t.values), t.delta,
                         t.paper.value if t.paper else None, _paper_delta(t),
                         t.size_wo_e_mib, t.paper.size_mb if t.paper else None,
                         " ".join(map(str, t.seeds)), "/".join(map(str, t.layer_bits or [])),
                         " | ".join(t.failed), " ".join(t.config_hashes),
                         "; ".join(f"{k}={v}" for k, v in t.settings.items()) if t.setting else ""])
    return out.getvalue()
