"""Q-BERT's Hessian sensitivity analysis on a fine-tuned model: Omega table, Figure 2, costs.

For one task: loads the full-precision fine-tuned run ``--init-from`` and runs the analysis the
way ``quant=qbert_mp`` runs it (same cache, so later qbert_mp jobs with the same weights, data
and settings reuse it), then (``--trace``) the HAWQ-v2 trace variant and (``--naive-runs N``)
a plain power iteration that recomputes the forward and first backward pass for every
Hessian-vector product, on the first N runs' batches, to measure what the retained graph saves.
Writes ``experiments/results/hessian_<task>_<name>.{json,md}`` and the two figures. Example:

    python experiments/hessian_sensitivity.py --task sst2 --init-from outputs/.../finetuned/sst2_minilm_x \
        --name cpu --trace --naive-runs 2 -- data.source=sample

Everything after ``--`` is a qbert override (task, data, hessian.*).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
from hydra import compose, initialize_config_dir

from qbert.config import CONF_DIR, register_configs, validate
from qbert.data.module import TaskDataModule
from qbert.hessian.eigen import power_iteration
from qbert.hessian.hvp import BlockHessian, eager_attention, layer_blocks
from qbert.hessian.mixed_precision import sensitivity_for
from qbert.hessian.plots import eigenvalue_boxplot, loss_landscape
from qbert.models import build_task_model, build_tokenizer, load_finetuned_
from qbert.environment import device_info, git_state, versions

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "experiments" / "results"


def naive_power_iteration_seconds(model, datamodule, sens, runs: int, max_iters: int, tol: float,
                                  seed: int) -> dict:
    """Power iteration where every HVP rebuilds the graph (forward + create_graph backward +
    second backward): the straightforward implementation the retained graph is compared with."""
    blocks = layer_blocks(model)
    windows = datamodule.train_features.inputs
    started, values, hvps = time.perf_counter(), [], 0
    with eager_attention(model):
        for r in range(runs):
            batch = datamodule.collate([windows[i] for i in sens.batches[r]])
            row = []
            for i in range(len(blocks)):
                def hvp(v, i=i):
                    nonlocal hvps
                    hvps += 1
                    with BlockHessian(model, [batch], blocks) as h:
                        return h.hvp(i, v)
                rng = torch.Generator().manual_seed(seed * 1_000_003 + r * 1_009 + i)
                est = power_iteration(hvp, [p.shape for _, p in blocks[i]], rng, blocks[i][0][1], max_iters, tol)
                row.append(est.value)
            values.append(row)
    seconds = time.perf_counter() - started
    return {"runs": runs, "seconds": seconds, "seconds_per_run": seconds / runs, "hvp_calls": hvps,
            "eigenvalues": values}


def markdown(task: str, sens, trace_sens, naive: dict | None) -> str:
    lines = ["| layer | mean λ | std λ | min λ | max λ | runs λ<0 | Ω = \\|mean\\| + std | converged |"
             + (" trace / weight |" if trace_sens else ""),
             "|---|---|---|---|---|---|---|---|" + ("---|" if trace_sens else "")]
    trace_rows = trace_sens.table() if trace_sens else None
    for i, row in enumerate(sens.table()):
        line = (f"| {i + 1} | {row['mean']:.3f} | {row['std']:.3f} | {row['min']:.3f} | {row['max']:.3f} | "
                f"{row['negative_runs']} | {row['omega']:.3f} | {row['converged_runs']}/{len(sens.eigenvalues)} |")
        if trace_rows:
            line += f" {trace_rows[i]['trace_per_weight']:.3e} |"
        lines.append(line)
    t = sens.timing
    lines += ["", f"Analysis ({task}): {t['total_s']:.1f} s in all; {t['hvp_calls']} Hessian-vector products, "
              f"{t['hvp_s'] * 1e3:.1f} ms each on the retained graph = {t['hvp_over_forward_backward']:.2f}x "
              f"one forward+backward ({t['forward_backward_s'] * 1e3:.1f} ms); building the graph "
              f"(forward + create_graph backward) {t['setup_s'] / len(sens.eigenvalues) * 1e3:.1f} ms per run "
              f"= {t['setup_over_forward_backward']:.2f}x."]
    lines.append(f"Power iteration alone (graphs + {t['power_hvp_calls']} products): {t['power_iteration_s']:.1f} s; "
                 f"Hutchinson trace: {t['trace_hvp_calls']} products; loss landscape: {t['landscape_s']:.1f} s.")
    if naive:
        ours = t["power_iteration_s"] / len(sens.eigenvalues)
        lines.append(f"Naive power iteration (graph rebuilt for every product), {naive['runs']} run(s): "
                     f"{naive['seconds_per_run']:.1f} s per run vs {ours:.1f} s per run here "
                     f"({naive['seconds_per_run'] / ours:.2f}x faster).")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--task", required=True)
    parser.add_argument("--init-from", required=True, help="the full-precision fine-tuned run folder")
    parser.add_argument("--name", default="cpu")
    parser.add_argument("--trace", action="store_true", help="also the Hutchinson trace variant")
    parser.add_argument("--naive-runs", type=int, default=0)
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_args()

    register_configs()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose(config_name="train", overrides=[f"task={args.task}", "quant=qbert_mp",
                                                      f"init_from={args.init_from}", "output_dir=.", *args.overrides])
    run_cfg = validate(cfg)
    torch.manual_seed(run_cfg.seed)
    tokenizer = build_tokenizer(run_cfg.model)
    datamodule = TaskDataModule(run_cfg.task, run_cfg.data, run_cfg.optim, tokenizer, run_cfg.seed)
    model = build_task_model(run_cfg.model, run_cfg.task, vocab_size=len(tokenizer))
    load_finetuned_(model, args.init_from)

    if args.trace:  # one analysis gives both: the eigenvalues and the traces
        run_cfg.hessian.sensitivity = "trace"
    sens, path, cached = sensitivity_for(model, datamodule, run_cfg)
    trace_sens = sens if args.trace else None
    naive = None
    if args.naive_runs:
        model.eval()
        naive = naive_power_iteration_seconds(model, datamodule, sens, args.naive_runs, run_cfg.hessian.max_iters,
                                              run_cfg.hessian.tol, sens.settings["seed"])

    stem = f"hessian_{args.task}_{args.name}"
    RESULTS.mkdir(parents=True, exist_ok=True)
    figures = {"eigenvalues": str(eigenvalue_boxplot(sens, RESULTS / f"{stem}_eigenvalues.png",
                                                     f"{args.task} / MiniLM-L6: top Hessian eigenvalue per layer")),
               "landscape": str(loss_landscape(sens, RESULTS / f"{stem}_landscape.png",
                                               f"{args.task} / MiniLM-L6: loss along each layer's top eigenvector"))}
    record = {"task": args.task, "init_from": args.init_from, "overrides": args.overrides, "cache": str(path),
              "from_cache": cached, "table": sens.table(), "timing": sens.timing, "settings": sens.settings,
              "eigenvalues": sens.eigenvalues, "iterations": sens.iterations,
              "trace": None if trace_sens is None else {"table": trace_sens.table(), "timing": trace_sens.timing,
                                                        "traces": trace_sens.traces},
              "naive": naive, "figures": figures, "device": device_info("cpu"),
              "git": git_state(REPO), "versions": versions()}
    (RESULTS / f"{stem}.json").write_text(json.dumps(record, indent=1) + "\n")
    table = markdown(args.task, sens, trace_sens, naive)
    (RESULTS / f"{stem}.md").write_text(table)
    print(table)
    print("wrote", RESULTS / f"{stem}.json")


if __name__ == "__main__":
    main()
