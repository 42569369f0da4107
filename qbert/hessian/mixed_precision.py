"""Q-BERT MP in the pipeline: sensitivity (cached) -> per-layer widths -> record and pictures.

``hessian_allocation(model, datamodule, run_cfg, out_dir)`` is the one call ``pipeline.run`` makes
for ``quant=qbert_mp``; it returns the allocation report that goes into results.json (its
``bits`` become a ``layerwise_plan``).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import shutil
from pathlib import Path
from typing import Any

import torch
from torch import nn

from qbert.config import HessianConfig, QuantConfig, RunConfig
from qbert.hessian import cache
from qbert.hessian.allocate import (encoder_mib, ilp_allocation, layer_costs, rule_allocation,
                                    weight_perturbation)
from qbert.hessian.eigen import STOPPING_RULE
from qbert.hessian.hvp import eager_attention
from qbert.hessian.plots import eigenvalue_boxplot, loss_landscape
from qbert.hessian.sensitivity import AnalysisSettings, Sensitivity, analyze
from qbert.methods import weight_range_kw

log = logging.getLogger(__name__)


def analysis_settings(hc: HessianConfig, seed: int) -> dict[str, Any]:
    """The settings that change the result (cache_dir and plots do not)."""
    settings = dataclasses.asdict(hc)
    for key in ("cache_dir", "plots", "on_no_convergence", "stream"):  # stream: how, not what
        settings.pop(key)
    if settings["run_fraction"] is None:  # unset: the key analyses cached before it existed had
        settings.pop("run_fraction")
    settings["seed"] = seed if hc.seed is None else hc.seed
    settings["with_trace"] = hc.sensitivity == "trace"
    settings.pop("sensitivity")  # eigenvalues are always computed; the trace only on request
    if not settings["with_trace"]:
        settings.pop("trace_samples")
    # The power iteration's stopping rule: the residual ||Hv - lam v|| <= tol |lam| (before: the
    # relative change of lam between steps, recorded without this key). Part of the cache key, so
    # an analysis stopped by the old rule is never read as one stopped by this one.
    settings["stop"] = STOPPING_RULE
    return settings


def sensitivity_for(model: nn.Module, datamodule, run_cfg: RunConfig) -> tuple[Sensitivity, Path, bool]:
    """(analysis, its cache file, whether it came from the cache) for the model as loaded."""
    hc = run_cfg.hessian
    settings = analysis_settings(hc, run_cfg.seed)
    data = dataclasses.asdict(run_cfg.data)
    data.pop("num_workers")
    fields = {"weights": cache.weights_hash(model), "task": dataclasses.asdict(run_cfg.task), "data": data,
              "model": run_cfg.model.name}
    key = cache.cache_key({**fields, "analysis": settings})
    prefix = f"{run_cfg.task.name}_{run_cfg.model.name}"
    path = cache.cache_path(hc.cache_dir, prefix, key)
    candidates = [(path, key)]
    if not settings["with_trace"]:  # an analysis that also took the trace has every eigenvalue too
        superset = {**settings, "with_trace": True, "trace_samples": hc.trace_samples}
        superset_key = cache.cache_key({**fields, "analysis": superset})
        candidates.append((cache.cache_path(hc.cache_dir, prefix, superset_key), superset_key))
    for candidate, candidate_key in candidates:
        found = cache.load(candidate, candidate_key)
        if found is not None:
            log.info("Hessian sensitivity: reusing %s", candidate)
            return found, candidate, True

    per_run = (f"{hc.batches_per_run} batch(es) of {hc.batch_size}" if hc.batches_per_run is not None else
               f"{100 * hc.run_fraction:g}% of the training data in batches of {hc.batch_size}")
    log.info("Hessian sensitivity: computing (%d runs, each on %s drawn from %g%% of the training data%s)",
             hc.runs, per_run, 100 * hc.fraction, ", streamed" if hc.stream else "")
    datamodule.setup("fit")
    device = "cuda" if run_cfg.trainer.accelerator in ("gpu", "cuda") and torch.cuda.is_available() else "cpu"
    was_training = model.training
    model.eval()  # the analysis is of the deterministic (dropout-free) loss, as in Q-BERT
    model.to(device)
    try:
        with eager_attention(model):  # SDPA kernels have no double backward
            sens = analyze(model, datamodule.train_features.inputs, datamodule.collate, AnalysisSettings(
                fraction=hc.fraction, runs=hc.runs, batch_size=hc.batch_size, batches_per_run=hc.batches_per_run,
                run_fraction=hc.run_fraction, stream=hc.stream,
                max_iters=hc.max_iters, tol=hc.tol, with_trace=settings["with_trace"],
                trace_samples=hc.trace_samples, on_no_convergence=hc.on_no_convergence, seed=settings["seed"],
                landscape_layers=hc.landscape_layers, landscape_points=hc.landscape_points,
                landscape_radius=hc.landscape_radius, progress=run_cfg.trainer.enable_progress_bar))
    finally:
        model.to("cpu").train(was_training)
    sens.settings = {**settings, "cache_key": key, "device": device, "mode": "eval", "attention": "eager"}
    cache.save(path, sens)
    log.info("Hessian sensitivity: %.1f s, saved to %s", sens.timing["total_s"], path)
    return sens, path, False


def _plan_kw(quant: QuantConfig, config) -> dict[str, Any]:
    """What ``layerwise_plan`` needs besides widths and groups, as ``plan_for`` would pass it."""
    return {"heads_as_groups": quant.heads_as_groups, "groups_per_head": quant.groups_per_head,
            "num_heads": config.num_attention_heads,
            "symmetric": quant.symmetric, **weight_range_kw(quant)}


def allocate(sens: Sensitivity, model: nn.Module, quant: QuantConfig, kind: str) -> dict[str, Any]:
    """Per-layer widths by the rule or the integer program, with what they cost."""
    config = model.config
    scores = sens.scores(kind)
    plan_kw = _plan_kw(quant, config)
    rule = rule_allocation(scores, quant.w_bits, quant.high_bits, quant.high_layers, quant.avg_bits) \
        if quant.high_bits > quant.w_bits else None
    report: dict[str, Any] = {"allocation": quant.allocation, "sensitivity": kind, "scores": scores}
    if quant.allocation == "rule":
        bits = rule
    else:
        choices = sorted(set(quant.bit_choices))
        budget = quant.size_budget_mb
        if budget is None:
            if rule is None:
                raise ValueError("config key 'quant.size_budget_mb': needed when quant.high_bits <= quant.w_bits "
                                 "(no rule allocation to take the size from)")
            budget = encoder_mib(config, rule, quant.groups, **plan_kw)
        perturbation = weight_perturbation(model, choices, quant.groups, **plan_kw)
        cost = layer_costs(config, choices, quant.groups, **plan_kw)
        bits, objective = ilp_allocation(scores, perturbation, cost, choices, budget)
        report.update(budget_mib=budget, choices=choices, objective=objective,
                      perturbation=perturbation.tolist(), layer_cost_mib=cost.tolist())
        if rule is not None:  # the paper's rule on the same objective, for comparison
            index = {b: j for j, b in enumerate(choices)}
            if all(b in index for b in rule):
                report["rule_bits"] = rule
                report["rule_objective"] = float(sum(abs(scores[i]) * perturbation[i, index[b]]
                                                     for i, b in enumerate(rule)))
    report["bits"] = bits
    report["size_wo_e_mib"] = encoder_mib(config, bits, quant.groups, **plan_kw)
    report["mean_bits"] = sum(bits) / len(bits)
    return report


def hessian_allocation(model: nn.Module, datamodule, run_cfg: RunConfig, out_dir: Path) -> dict[str, Any]:
    """Sensitivity -> allocation; writes ``out_dir``/{sensitivity.json, allocation.json, *.png}.
    ``quant.allocation=manual`` takes ``quant.layer_bits`` as given and runs no analysis."""
    quant, layers = run_cfg.quant, model.config.num_hidden_layers
    if quant.allocation == "manual":
        if len(quant.layer_bits) != layers:
            raise ValueError(f"config key 'quant.layer_bits': {len(quant.layer_bits)} widths for a model with "
                             f"{layers} encoder layers")
        bits = list(quant.layer_bits)
        size = encoder_mib(model.config, bits, quant.groups, **_plan_kw(quant, model.config))
        return {"bits": bits, "size_wo_e_mib": size,
                "mean_bits": sum(bits) / layers, "allocation": "manual"}
    sens, path, cached = sensitivity_for(model, datamodule, run_cfg)
    report = allocate(sens, model, run_cfg.quant, run_cfg.hessian.sensitivity)
    out_dir.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(path, out_dir / "sensitivity.json")
    (out_dir / "allocation.json").write_text(json.dumps(report, indent=1) + "\n")
    figures = []
    if run_cfg.hessian.plots:
        name = f"{run_cfg.task.name} / {run_cfg.model.name}"
        figures.append(str(eigenvalue_boxplot(sens, out_dir / "eigenvalues.png",
                                              f"{name}: top Hessian eigenvalue per layer ({len(sens.eigenvalues)} runs)")))
        if sens.landscape:
            figures.append(str(loss_landscape(sens, out_dir / "loss_landscape.png",
                                              f"{name}: loss along the top eigenvector")))
    log.info("Q-BERT MP (%s, %s): bits per layer %s, Size w/o-e %.3f MiB", report["allocation"],
             report["sensitivity"], report["bits"], report["size_wo_e_mib"])
    return {"bits": report["bits"], "size_wo_e_mib": report["size_wo_e_mib"], "mean_bits": report["mean_bits"],
            "allocation": report["allocation"], "sensitivity": report["sensitivity"], "scores": report["scores"],
            "table": sens.table(), "timing": sens.timing, "cache": str(path), "from_cache": cached,
            "figures": figures, **{k: report[k] for k in ("budget_mib", "objective", "rule_bits", "rule_objective")
                                   if k in report}}
