"""Per-layer Hessian sensitivity: Q-BERT's top-eigenvalue distribution, HAWQ-v2's trace.

For each of ``runs`` runs, a batch set (``batches_per_run`` batches, or ``run_fraction`` of the
training windows) is drawn from a pool of ``fraction`` of the training windows; the Hessian of
the mean loss over it is restricted to each encoder layer's weights (``BlockHessian``, or
``StreamedBlockHessian`` with ``stream``) and its top eigenvalue found by power iteration (and, if asked, its trace by Hutchinson). The
runs give a distribution per layer; Q-BERT's sensitivity is

    Omega_i = |mean_r(lambda_i,r)| + std_r(lambda_i,r)      (population std over the runs)

Power iteration returns the eigenvalue of largest *magnitude*, which is negative on batches
where the loss is locally concave along some direction (seen on MiniLM's early layers). The
signed values are kept in the record; Omega follows the paper (|mean| + std), so a layer whose
estimates change sign across runs is still ranked high by its spread.

The trace sensitivity is the mean Hessian diagonal (trace / number of weights), averaged over
the runs (HAWQ-v2; comparable across layers of different sizes).
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Optional, Sequence

import torch
from torch import Tensor, nn

from qbert.hessian.eigen import EigenEstimate, PowerIteration, dot, random_vector, trace_from_samples
from qbert.hessian.hvp import BlockHessian, StreamedBlockHessian, layer_blocks, task_loss

log = logging.getLogger(__name__)


class SensitivityError(RuntimeError):
    """A sensitivity estimate that must not be passed on: names the layer and the run."""


@dataclass
class Sensitivity:
    """Everything the analysis measured; JSON round-trips through ``to_dict``/``from_dict``."""

    layers: list[str]  # "encoder.layer.<i>"
    num_parameters: list[int]  # weights per layer block
    eigenvalues: list[list[float]]  # [run][layer], signed
    iterations: list[list[int]]
    converged: list[list[bool]]
    traces: Optional[list[list[float]]] = None  # [run][layer] Hutchinson trace estimates
    trace_stderr: Optional[list[list[float]]] = None
    batches: list[list[int]] = field(default_factory=list)  # training-window indices per run
    losses: list[float] = field(default_factory=list)  # mean loss of each run's batches
    landscape: dict[str, dict[str, list[float]]] = field(default_factory=dict)  # layer -> eps, loss
    timing: dict[str, float] = field(default_factory=dict)
    settings: dict[str, Any] = field(default_factory=dict)
    # [run][layer] ||H v - lam v|| / |lam| at the last iterate: converged means <= tol (absent in
    # records written before the residual stopping rule)
    residuals: list[list[float]] = field(default_factory=list)

    @property
    def omega(self) -> list[float]:
        """Q-BERT's Omega_i = |mean(lambda_i)| + std(lambda_i) per layer."""
        lam = torch.tensor(self.eigenvalues, dtype=torch.float64)  # [runs, layers]
        return (lam.mean(0).abs() + lam.std(0, correction=0)).tolist()

    @property
    def mean_trace_per_weight(self) -> list[float]:
        if self.traces is None:
            raise ValueError("no trace estimates: run the analysis with sensitivity=trace")
        tr = torch.tensor(self.traces, dtype=torch.float64).mean(0)
        return (tr / torch.tensor(self.num_parameters, dtype=torch.float64)).tolist()

    def scores(self, kind: str) -> list[float]:
        """The per-layer sensitivity that allocation ranks by: ``eigenvalue`` (Omega) or ``trace``."""
        if kind == "eigenvalue":
            return self.omega
        if kind == "trace":
            return self.mean_trace_per_weight
        raise ValueError(f"sensitivity kind {kind!r}, expected 'eigenvalue' or 'trace'")

    def table(self) -> list[dict[str, float]]:
        """One row per layer: the statistics the paper's Figure 2 shows, plus the scores."""
        lam = torch.tensor(self.eigenvalues, dtype=torch.float64)
        rows = []
        for i, name in enumerate(self.layers):
            col = lam[:, i]
            row = {"layer": name, "mean": float(col.mean()), "std": float(col.std(correction=0)),
                   "min": float(col.min()), "max": float(col.max()), "negative_runs": int((col < 0).sum()),
                   "omega": self.omega[i], "converged_runs": int(sum(r[i] for r in self.converged))}
            if self.traces is not None:
                row["trace_per_weight"] = self.mean_trace_per_weight[i]
            rows.append(row)
        return rows

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["omega"] = self.omega  # derived, stored for readers of the JSON
        return out

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Sensitivity":
        known = {f for f in cls.__dataclass_fields__}
        return cls(**{k: v for k, v in d.items() if k in known})


def draw_run_batches(num_windows: int, fraction: float, runs: int, windows_per_run: int,
                     generator: torch.Generator) -> list[list[int]]:
    """Window indices for each run: a seeded pool of ``fraction`` of the data, cut into
    consecutive disjoint chunks (reshuffled when the pool is used up)."""
    pool_size = max(1, round(fraction * num_windows))
    if pool_size < windows_per_run:
        raise ValueError(
            f"config key 'hessian.fraction': {fraction} of {num_windows} training windows is {pool_size}, "
            f"fewer than one run needs ({windows_per_run} = hessian.batch_size x the batches of a run)")
    pool = torch.randperm(num_windows, generator=generator)[:pool_size]
    order, cursor, out = pool[torch.randperm(pool_size, generator=generator)], 0, []
    for _ in range(runs):
        if cursor + windows_per_run > pool_size:
            order, cursor = pool[torch.randperm(pool_size, generator=generator)], 0
        out.append(order[cursor:cursor + windows_per_run].tolist())
        cursor += windows_per_run
    return out


@dataclass(frozen=True)
class AnalysisSettings:
    """How the analysis runs (``qbert.config.HessianConfig`` builds one for a run)."""

    fraction: float = 0.1  # of the training windows: the pool each run draws its batches from
    runs: int = 10
    batch_size: int = 32
    batches_per_run: Optional[int] = 1  # None: as many as run_fraction of the training windows fill
    max_iters: int = 50
    tol: float = 1e-3
    with_trace: bool = False
    trace_samples: int = 32
    on_no_convergence: str = "warn"  # warn | error
    seed: int = 0
    landscape_layers: Optional[Sequence[int]] = ()  # None: every layer
    landscape_points: int = 21
    landscape_radius: float = 0.5
    progress: bool = True
    run_fraction: Optional[float] = None  # of the training windows, each run's data (batches_per_run=None)
    stream: bool = False  # StreamedBlockHessian: one batch's graph in memory at a time, same numbers


def batches_per_run_for(num_windows: int, batch_size: int, batches_per_run: Optional[int],
                        run_fraction: Optional[float]) -> int:
    """The batches of one run: ``batches_per_run``, or (None) as many full batches as fit in
    ``run_fraction`` of the training windows (rounded down, so 1 / run_fraction runs never need
    more than all of them and stay disjoint: 10 % of SST-2's 67,349 sentences = 6,734.9 -> 210
    batches of 32)."""
    if (batches_per_run is None) == (run_fraction is None):
        raise ValueError("config keys 'hessian.batches_per_run' and 'hessian.run_fraction': set exactly one "
                         f"(got {batches_per_run} and {run_fraction})")
    if batches_per_run is not None:
        return batches_per_run
    return max(1, math.floor(run_fraction * num_windows / batch_size))


def analyze(model: nn.Module, windows: Sequence[dict], collate: Callable[[list[dict]], dict[str, Tensor]],
            settings: AnalysisSettings = AnalysisSettings()) -> Sensitivity:
    """Run the analysis on ``model`` as it is (its mode, attention kernel and device are the
    caller's: use eval mode and eager attention).

    The layers of a run are iterated in lockstep: each step asks the operator for the products
    of every layer still iterating, which a ``StreamedBlockHessian`` (``stream``) forms in one
    pass over the run's batches. Each layer has its own seeded generator (start vector, then the
    trace's probes), so the numbers do not depend on the order, nor on ``stream``."""
    st = settings
    fraction, runs, batch_size = st.fraction, st.runs, st.batch_size
    max_iters, tol, with_trace, trace_samples, seed = st.max_iters, st.tol, st.with_trace, st.trace_samples, st.seed
    on_no_convergence, landscape_layers = st.on_no_convergence, st.landscape_layers
    landscape_points, landscape_radius, progress = st.landscape_points, st.landscape_radius, st.progress
    started = time.perf_counter()
    blocks = layer_blocks(model)
    num_layers = len(blocks)
    layers = [f"encoder.layer.{i}" for i in range(num_layers)]  # layer_blocks returns them in order
    batches_per_run = batches_per_run_for(len(windows), batch_size, st.batches_per_run, st.run_fraction)
    generator = torch.Generator().manual_seed(seed)
    run_windows = draw_run_batches(len(windows), fraction, runs, batch_size * batches_per_run, generator)
    landscape_layers = range(num_layers) if landscape_layers is None else landscape_layers
    like = blocks[0][0][1]
    params = [p for b in blocks for _, p in b]

    eig = [[math.nan] * num_layers for _ in range(runs)]
    iters = [[0] * num_layers for _ in range(runs)]
    conv = [[False] * num_layers for _ in range(runs)]
    resid = [[math.nan] * num_layers for _ in range(runs)]
    traces = [[math.nan] * num_layers for _ in range(runs)] if with_trace else None
    stderr = [[math.nan] * num_layers for _ in range(runs)] if with_trace else None
    losses, landscape = [], {}
    setup_s = hvp_s = fwd_bwd_s = landscape_s = graph_s = 0.0
    calls = {"power": 0, "trace": 0}
    passes = 0
    unconverged: list[str] = []
    bar = _progress(runs * num_layers, progress)
    operator = StreamedBlockHessian if st.stream else BlockHessian
    for r, indices in enumerate(run_windows):
        batches = [collate([windows[i] for i in indices[k:k + batch_size]])
                   for k in range(0, len(indices), batch_size)]
        fwd_bwd_s += _time_forward_backward(model, batches[:1], params) * len(batches)
        t0 = time.perf_counter()
        with operator(model, batches, blocks) as hessian:
            setup_s += time.perf_counter() - t0

            def products(vectors: dict[int, list[Tensor]], kind: str) -> dict[int, list[Tensor]]:
                nonlocal hvp_s
                t = time.perf_counter()
                out = hessian.hvp_many(vectors)
                hvp_s += time.perf_counter() - t
                calls[kind] += len(vectors)
                return out

            rngs = [torch.Generator().manual_seed(seed * 1_000_003 + r * 1_009 + i) for i in range(num_layers)]
            its = [PowerIteration(hessian.shapes(i), rngs[i], like, max_iters, tol) for i in range(num_layers)]
            while active := [i for i in range(num_layers) if not its[i].done]:
                for i, hv in products({i: its[i].vector for i in active}, "power").items():
                    try:
                        its[i].step(hv)
                    except FloatingPointError as err:
                        raise SensitivityError(f"{layers[i]}, run {r}: {err}") from err
            if with_trace:  # the same probes as hutchinson_trace draws, all layers per product pass
                samples: list[list[float]] = [[] for _ in range(num_layers)]
                for _ in range(trace_samples):
                    probes = {i: random_vector(hessian.shapes(i), rngs[i], like, kind="rademacher")
                              for i in range(num_layers)}
                    for i, hz in products(probes, "trace").items():
                        samples[i].append(float(dot(hz, probes[i])))
                for i in range(num_layers):
                    try:
                        tr = trace_from_samples(samples[i])
                    except FloatingPointError as err:
                        raise SensitivityError(f"{layers[i]}, run {r}: {err}") from err
                    traces[r][i], stderr[r][i] = tr.value, tr.stderr
            losses.append(hessian.loss)
            if st.stream:
                passes += hessian.passes
                graph_s += hessian.graph_s
        for i, it in enumerate(its):
            est = it.result()
            eig[r][i], iters[r][i], conv[r][i], resid[r][i] = est.value, est.iterations, est.converged, est.residual
            if not est.converged:
                unconverged.append(_no_convergence(layers[i], r, est, max_iters, tol, on_no_convergence))
            if r == 0 and i in landscape_layers:
                t = time.perf_counter()
                landscape[layers[i]] = loss_along(model, batches, blocks[i], est.vector,
                                                  landscape_radius, landscape_points)
                landscape_s += time.perf_counter() - t
            bar.update(1)
            bar.set_postfix(layer=i, run=r, eig=f"{est.value:.3g}")
    bar.close()
    if unconverged:  # one warning for the analysis; each case is in the record (converged)
        log.warning("%d of %d power iterations stopped at max_iters=%d before converging to tol=%g "
                    "(raise hessian.max_iters or hessian.tol): %s", len(unconverged), runs * num_layers,
                    max_iters, tol, "; ".join(unconverged))
    hvp_calls = calls["power"] + calls["trace"]
    per_hvp = hvp_s / max(hvp_calls, 1)
    timing = {"total_s": time.perf_counter() - started, "setup_s": setup_s, "hvp_total_s": hvp_s,
              "hvp_calls": hvp_calls, "power_hvp_calls": calls["power"], "trace_hvp_calls": calls["trace"],
              "hvp_s": per_hvp, "landscape_s": landscape_s,
              # what Q-BERT's analysis alone costs: graphs + power-iteration products
              "power_iteration_s": setup_s + calls["power"] * per_hvp,
              # one forward + backward over a run's batches (timed on its first batch, times the batches)
              "forward_backward_s": fwd_bwd_s / runs,
              "setup_over_forward_backward": setup_s / max(fwd_bwd_s, 1e-12),
              "hvp_over_forward_backward": per_hvp / max(fwd_bwd_s / runs / batches_per_run, 1e-12),
              "batches_per_run": batches_per_run, "stream": st.stream,
              # streamed: passes over a run's batches, and the seconds of their forwards + first
              # backwards (rebuilding the graphs), inside hvp_total_s
              "passes": passes, "graph_rebuild_s": graph_s}
    return Sensitivity(layers, [sum(p.numel() for _, p in b) for b in blocks], eig, iters, conv, traces,
                       stderr, run_windows, losses, landscape, timing, residuals=resid)


def _no_convergence(layer: str, run: int, est: EigenEstimate, max_iters: int, tol: float, action: str) -> str:
    """Raise (on_no_convergence=error), else return the case for the analysis' one warning."""
    last = ", ".join(f"{x:.4g}" for x in est.history[-3:])
    if action == "error":
        raise SensitivityError(f"{layer}, run {run}: power iteration did not converge to tol={tol} in "
                               f"{max_iters} iterations (last estimates {last}, relative residual "
                               f"{est.residual:.2g}); raise hessian.max_iters or hessian.tol")
    return (f"{layer}, run {run}: power iteration did not converge (last estimates {last}, relative residual "
            f"{est.residual:.2g})")


@torch.no_grad()
def loss_along(model: nn.Module, batches: list[dict[str, Tensor]], block: list[tuple[str, nn.Parameter]],
               direction: list[Tensor], radius: float, points: int) -> dict[str, list[float]]:
    """Loss at W + eps * d for eps in [-radius, radius] (d: a unit block vector); W restored after."""
    params = [p for _, p in block]
    saved = [p.detach().clone() for p in params]
    eps_grid = torch.linspace(-radius, radius, points).tolist()
    losses = []
    try:
        for eps in eps_grid:
            for p, w, d in zip(params, saved, direction):
                p.copy_(w + eps * d)
            losses.append(sum(float(task_loss(model, b)) for b in batches) / len(batches))
    finally:
        for p, w in zip(params, saved):
            p.copy_(w)
    return {"eps": eps_grid, "loss": losses}


def _time_forward_backward(model: nn.Module, batches: list[dict[str, Tensor]], params: list[nn.Parameter]) -> float:
    """Seconds of one plain forward + backward over ``batches``: the unit an HVP is compared to."""
    t = time.perf_counter()
    with torch.enable_grad():
        for b in batches:
            torch.autograd.grad(task_loss(model, b), params)
    return time.perf_counter() - t


class _NoBar:
    def update(self, n: int) -> None: ...
    def set_postfix(self, **kw) -> None: ...
    def close(self) -> None: ...


def _progress(total: int, enabled: bool):
    if not enabled:
        return _NoBar()
    from tqdm.auto import tqdm
    return tqdm(total=total, desc="Hessian power iteration (layers x runs)", unit="layer")
