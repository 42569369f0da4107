"""The report's plots, one PNG each: metric vs weight bits per method, metric vs size with the
Pareto front, our Δ beside the paper's Δ per row, and the Hessian sensitivity Ω per layer where
the sweep computed it. A method has one colour in every plot of every report (``method_colour``)."""

from __future__ import annotations

import zlib
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only; no display on a server
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.ticker import FuncFormatter, LogLocator  # noqa: E402

from qbert.report.tables import Table, TableRow  # noqa: E402


# Label prefix -> colour, most specific first; labels are the method registry's (qbert.methods).
METHOD_COLOURS = (
    ("Baseline", "#6e7781"),
    ("Q-BERT MP", "#2ca02c"),
    ("Q-BERT, ", "#bcbd22"),  # module ablations ("Q-BERT, embedding only")
    ("Q-BERT", "#1f77b4"),
    ("DirectQ", "#ff7f0e"),
    ("Q8BERT", "#d62728"),
    ("Dynamic PTQ", "#e377c2"),
    ("MKQ-BERT w/o KD", "#8c564b"),
    ("MKQ-BERT", "#9467bd"),
)
SPARE_COLOURS = ("#17becf", "#7f7f7f", "#aec7e8", "#ffbb78", "#98df8a", "#ff9896", "#c5b0d5")


def method_colour(method: str) -> str:
    """The same colour for a method in every plot; an unknown label gets a stable spare colour."""
    for prefix, colour in METHOD_COLOURS:
        if method.startswith(prefix):
            return colour
    return SPARE_COLOURS[zlib.crc32(method.encode()) % len(SPARE_COLOURS)]


def _plain_log_ticks(axis) -> None:
    """Log-scale ticks as plain numbers (2, 3, 5, 10, 20 ...) instead of 10^0 / 10^1 alone."""
    axis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 3.0, 5.0)))
    axis.set_minor_locator(LogLocator(base=10, subs=(1.5, 4.0, 7.0)))
    axis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    axis.set_minor_formatter(FuncFormatter(lambda v, _: ""))


def _finished(table: Table) -> list[TableRow]:
    return [r for r in table.rows if r.mean is not None]


VARIANT_STYLES = [{"marker": "o", "linestyle": "-"}, {"marker": "s", "linestyle": "--"},
                  {"marker": "^", "linestyle": ":"}, {"marker": "D", "linestyle": "-."}]


def _series(rows: list[TableRow]) -> list[tuple[str, dict]]:
    """One plotted series per row name; runs of one method that differ in a setting share the
    method's colour and get their own marker and line style."""
    names = list(dict.fromkeys(r.method_shown for r in rows))
    seen: dict[str, int] = {}
    series = []
    for name in names:
        method = next(r.method for r in rows if r.method_shown == name)
        index = seen.get(method, 0)
        seen[method] = index + 1
        series.append((name, VARIANT_STYLES[index % len(VARIANT_STYLES)]))
    return series


def metric_vs_bits(table: Table, path: Path) -> Path | None:
    rows = [r for r in _finished(table) if r.method != "Baseline"]
    if not rows:
        return None
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    for name, style in _series(rows):
        pts = sorted((r for r in rows if r.method_shown == name), key=lambda r: r.mean_w_bits)
        ax.errorbar([r.mean_w_bits for r in pts], [r.mean for r in pts], yerr=[r.std or 0.0 for r in pts],
                    marker=style["marker"], linestyle=style["linestyle"], capsize=3, label=name,
                    color=method_colour(pts[0].method))
    baseline = next((r for r in _finished(table) if r.method == "Baseline"), None)
    if baseline is not None:
        ax.axhline(baseline.mean, color="grey", linestyle="--", label=f"baseline {baseline.mean:.2f}")
    ax.set_xlabel("encoder weight bits (mean over layers)")
    ax.set_ylabel(table.metric)
    ax.set_title(f"{table.task} / {table.model}: {table.metric} vs weight bits", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return _save(fig, path)


def pareto_front(points: list[tuple[float, float]]) -> list[tuple[float, float]]:
    """Points no other point beats on both size (smaller) and metric (larger), by size."""
    front, best = [], float("-inf")
    for size, value in sorted(points, key=lambda p: (p[0], -p[1])):
        if value > best:
            front.append((size, value))
            best = value
    return front


def accuracy_vs_size(table: Table, path: Path) -> Path | None:
    rows = [r for r in _finished(table) if r.size_wo_e_mib is not None]
    if len(rows) < 2:
        return None
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    for name, style in _series(rows):
        pts = [r for r in rows if r.method_shown == name]
        ax.scatter([r.size_wo_e_mib for r in pts], [r.mean for r in pts], label=name, zorder=3,
                   marker=style["marker"], color=method_colour(pts[0].method))
    front = pareto_front([(r.size_wo_e_mib, r.mean) for r in rows])
    ax.step([p[0] for p in front], [p[1] for p in front], where="post", color="black", alpha=0.6,
            label="Pareto front", zorder=2)
    ax.set_xscale("log")
    _plain_log_ticks(ax.xaxis)
    ax.set_xlabel("encoder size, Size w/o-e (MiB, log scale)")
    ax.set_ylabel(table.metric)
    ax.set_title(f"{table.task} / {table.model}: {table.metric} vs size", fontsize=10)
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8)
    return _save(fig, path)


def delta_vs_paper(table: Table, path: Path) -> Path | None:
    """Per row, our Δ against our baseline beside the paper's Δ against its baseline: the models
    differ, so the drops are what compares."""
    rows = [r for r in _finished(table) if r.method != "Baseline" and r.delta is not None
            and r.paper is not None and r.paper.delta is not None]
    if not rows:
        return None
    fig, ax = plt.subplots(figsize=(6.4, 0.9 + 0.42 * len(rows)))
    ys = list(range(len(rows)))[::-1]
    for y, r in zip(ys, rows):
        colour = method_colour(r.method)
        ax.barh(y + 0.19, r.delta, 0.36, color=colour, xerr=r.std or None, capsize=2,
                label="ours" if y == ys[0] else None)
        ax.barh(y - 0.19, r.paper.delta, 0.36, color=colour, alpha=0.35, hatch="//", edgecolor=colour,
                label="paper" if y == ys[0] else None)
    ax.set_yticks(ys, [f"{r.label}-bit" for r in rows], fontsize=8)
    ax.axvline(0, color="black", linewidth=0.8)
    ax.set_xlabel(f"Δ {table.metric} vs baseline (points)")
    ax.set_title(f"{table.task} / {table.model}: our Δ (solid) vs the paper's Δ (hatched)", fontsize=10)
    ax.grid(alpha=0.3, axis="x")
    ax.legend(fontsize=8, loc="lower left")
    return _save(fig, path)


def omega_per_layer(table: Table, path: Path) -> Path | None:
    if not table.omega:
        return None
    fig, ax = plt.subplots(figsize=(6.4, 3.8))
    series = list(table.omega.items())
    width = 0.8 / len(series)
    for k, (label, omega) in enumerate(series):
        ax.bar([i + 1 + (k - (len(series) - 1) / 2) * width for i in range(len(omega))], omega, width, label=label)
    ax.set_xlabel("encoder layer")
    ax.set_ylabel("Ω = |mean λ| + std λ")
    ax.set_title(f"{table.task} / {table.model}: Hessian sensitivity per layer", fontsize=10)
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3, axis="y")
    return _save(fig, path)


def _save(fig, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def table_figures(table: Table, out_dir: Path) -> list[Path]:
    made = [metric_vs_bits(table, out_dir / f"{table.key}_metric_vs_bits.png"),
            accuracy_vs_size(table, out_dir / f"{table.key}_pareto.png"),
            delta_vs_paper(table, out_dir / f"{table.key}_delta_vs_paper.png"),
            omega_per_layer(table, out_dir / f"{table.key}_hessian_omega.png")]
    return [p for p in made if p is not None]
