"""Pictures of a sensitivity analysis: Q-BERT's Figure 2 and Figure 3 (as 1-D cuts)."""

from __future__ import annotations

from pathlib import Path

from qbert.hessian.sensitivity import Sensitivity


def _pyplot():
    """matplotlib on first use only: a run with hessian.plots=false never needs it."""
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    return plt


def eigenvalue_boxplot(sens: Sensitivity, path: Path, title: str = "") -> Path:
    """Figure 2: the distribution over runs of each layer's top Hessian eigenvalue, with Omega."""
    plt = _pyplot()
    data = [[run[i] for run in sens.eigenvalues] for i in range(len(sens.layers))]
    fig, ax = plt.subplots(figsize=(1.1 * len(sens.layers) + 2.5, 4))
    ax.boxplot(data, showmeans=True)
    ax.set_xticks(range(1, len(sens.layers) + 1), [str(i + 1) for i in range(len(sens.layers))])
    ax.plot([], [], "g^", label="mean over runs (line: median)")
    ax.plot(range(1, len(sens.layers) + 1), sens.omega, "r^", label=r"$\Omega$ = |mean| + std")
    ax.axhline(0.0, color="grey", lw=0.6)
    ax.set_xlabel("encoder layer")
    ax.set_ylabel("top Hessian eigenvalue")
    ax.set_title(title or f"Top eigenvalue per layer over {len(sens.eigenvalues)} runs")
    ax.legend(loc="best", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def loss_landscape(sens: Sensitivity, path: Path, title: str = "") -> Path:
    """Figure 3 as 1-D cuts: loss along each layer's top eigenvector (run 0's batches)."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 4))
    for layer, curve in sens.landscape.items():
        ax.plot(curve["eps"], curve["loss"], marker=".", label=f"layer {int(layer.rsplit('.', 1)[1]) + 1}")
    ax.set_xlabel(r"step $\epsilon$ along the unit top eigenvector")
    ax.set_ylabel("loss")
    ax.set_title(title or "Loss along each layer's top Hessian eigenvector")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
