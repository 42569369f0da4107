"""The report's plots, one PNG each: metric vs weight bits per method, metric vs size with the
Pareto front, and the Hessian sensitivity Ω per layer where the sweep computed it."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only; no display on a server
import matplotlib.pyplot as plt  # noqa: E402

from qbert.report.tables import Table, TableRow  # noqa: E402


def _finished(table: Table) -> list[TableRow]:
    return [r for r in table.rows if r.mean is not None]


def metric_vs_bits(table: Table, path: Path) -> Path | None:
    rows = [r for r in _finished(table) if r.method != "Baseline"]
    if not rows:
        return None
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    for method in dict.fromkeys(r.method for r in rows):
        pts = sorted((r for r in rows if r.method == method), key=lambda r: r.mean_w_bits)
        ax.errorbar([r.mean_w_bits for r in pts], [r.mean for r in pts], yerr=[r.std or 0.0 for r in pts],
                    marker="o", capsize=3, label=method)
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
    for method in dict.fromkeys(r.method for r in rows):
        pts = [r for r in rows if r.method == method]
        ax.scatter([r.size_wo_e_mib for r in pts], [r.mean for r in pts], label=method, zorder=3)
    front = pareto_front([(r.size_wo_e_mib, r.mean) for r in rows])
    ax.step([p[0] for p in front], [p[1] for p in front], where="post", color="black", alpha=0.6,
            label="Pareto front", zorder=2)
    ax.set_xscale("log")
    ax.set_xlabel("encoder size, Size w/o-e (MiB, log scale)")
    ax.set_ylabel(table.metric)
    ax.set_title(f"{table.task} / {table.model}: {table.metric} vs size", fontsize=10)
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8)
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
            omega_per_layer(table, out_dir / f"{table.key}_hessian_omega.png")]
    return [p for p in made if p is not None]
