"""What `hessian=published` (10 % of the training data per run, products streamed batch by batch)
costs on MiniLM-L6, measured on SST-2's committed sample and extrapolated to the full data, and
its memory as the batches of a run grow.

Two parts, each its own JSON under experiments/results/ (single-threaded, timed in CPU seconds
of the process by default):

``cost``    one run of the analysis on the sample (4,000 sentences; hessian=published: 10 % = 400
            = 12 batches of 32; a smaller ``hessian.run_fraction`` after ``--`` for a quick check),
            ``--steps`` lockstep power-iteration steps of all six layers, each one streamed pass
            over the run's batches; the time per batch and step, split into rebuilding the graph
            (forward + create_graph backward) and the six second backwards, extrapolated to
            SST-2's 67,349 sentences (210 batches of 32 per run, 10 runs) at 10 steps and at
            max_iters steps per run.
``memory``  peak RSS of a streamed and a kept-graph (``BlockHessian``) analysis on each of
            ``--memory-batches`` batches of 32 (2 steps), each in a fresh subprocess (ru_maxrss
            only grows).

Weights: the MiniLM-L6 package's encoder with a seeded classifier head, or ``--init-from`` a
fine-tuned run folder. Everything after ``--`` is a qbert override.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

import torch
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from qbert.config import CONF_DIR, register_configs, validate
from qbert.data.module import TaskDataModule
from qbert.environment import device_info, git_state, versions
from qbert.hessian.hvp import eager_attention
from qbert.hessian.sensitivity import AnalysisSettings, analyze, batches_per_run_for, draw_run_batches
from qbert.models import build_task_model, build_tokenizer, load_finetuned_

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "experiments" / "results"
SST2_TRAIN = 67_349  # sentences in SST-2's training split


def setup(args) -> tuple:
    torch.set_num_threads(1)
    register_configs()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose(config_name="train", overrides=["task=sst2", "data.source=sample", "hessian=published",
                                                      "output_dir=.", *args.overrides])
    run_cfg = validate(cfg)
    torch.manual_seed(run_cfg.seed)
    tokenizer = build_tokenizer(run_cfg.model)
    datamodule = TaskDataModule(run_cfg.task, run_cfg.data, run_cfg.optim, tokenizer, run_cfg.seed)
    datamodule.setup("fit")
    model = build_task_model(run_cfg.model, run_cfg.task, vocab_size=len(tokenizer))
    if args.init_from:
        load_finetuned_(model, args.init_from)
    model.eval()
    return run_cfg, datamodule, model


def settings(hc, **changes) -> AnalysisSettings:
    base = dict(fraction=hc.fraction, runs=1, batch_size=hc.batch_size, batches_per_run=hc.batches_per_run,
                run_fraction=hc.run_fraction, stream=hc.stream, max_iters=hc.max_iters, tol=hc.tol, seed=0,
                landscape_layers=(), progress=False)
    return AnalysisSettings(**{**base, **changes})


def rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def record_base(args, run_cfg) -> dict:
    return {"weights": args.init_from or f"package {run_cfg.model.package} (seeded classifier head)",
            "clock": "CPU seconds of the process (time.process_time)" if args.clock == "cpu" else "wall seconds",
            "overrides": args.overrides, "threads": torch.get_num_threads(), "device": device_info("cpu"),
            "git": git_state(REPO), "versions": versions()}


def cost(args) -> dict:
    run_cfg, datamodule, model = setup(args)
    hc = run_cfg.hessian
    windows = datamodule.train_features.inputs
    batches = batches_per_run_for(len(windows), hc.batch_size, hc.batches_per_run, hc.run_fraction)
    with eager_attention(model):
        # tol 1e-12: no layer stops early, every step is a pass with all six layers
        sens = analyze(model, windows, datamodule.collate, settings(hc, max_iters=args.steps, tol=1e-12))
    t = sens.timing
    per_pass = t["hvp_total_s"] / t["passes"]
    graph_per_batch = t["graph_rebuild_s"] / t["passes"] / batches
    layers = len(sens.layers)
    product_per_batch_layer = (per_pass / batches - graph_per_batch) / layers
    # The full data at hessian=published's own settings, whatever the sample run was told
    published = OmegaConf.load(CONF_DIR / "hessian" / "published.yaml")
    full_batches = batches_per_run_for(SST2_TRAIN, published.batch_size, None, published.run_fraction)
    per_step = full_batches * per_pass / batches  # a graph rebuild per batch, a second backward per layer
    full = {"sentences": SST2_TRAIN, "run_fraction": published.run_fraction, "batches_per_run": full_batches,
            "runs": published.runs, "per_step_s": per_step, "max_iters": published.max_iters,
            "note": "single thread; a run takes as many passes as its slowest layer's iterations (max_iters "
                    "when one does not converge); 10 steps for comparison"}
    for name, steps in (("max_iters", published.max_iters), ("10_steps", 10)):
        full[f"per_run_at_{name}_s"] = steps * per_step
        full[f"analysis_at_{name}_h"] = published.runs * steps * per_step / 3600
    return {"part": "cost", **record_base(args, run_cfg),
            "sample": {"sentences": len(windows), "run_fraction": hc.run_fraction, "batches_per_run": batches,
                       "batch_size": hc.batch_size, "steps": args.steps, "passes": t["passes"],
                       "loss": sens.losses[0]},
            "timing": t,
            "per_batch": {"pass_s": per_pass / batches, "graph_rebuild_s": graph_per_batch,
                          "second_backward_per_layer_s": product_per_batch_layer,
                          "forward_backward_s": t["forward_backward_s"] / batches},
            "full_data": full}


def memory_child(args) -> dict:
    run_cfg, datamodule, model = setup(args)
    hc = run_cfg.hessian
    windows = datamodule.train_features.inputs
    n = args.child_batches
    # The run's windows as analyze draws them (seed 0): a graph's size follows its batch's length
    indices = draw_run_batches(len(windows), hc.fraction, 1, hc.batch_size * n, torch.Generator().manual_seed(0))[0]
    lengths = [max(len(windows[i]["input_ids"]) for i in indices[k:k + hc.batch_size])
               for k in range(0, len(indices), hc.batch_size)]
    before = rss_mib()
    started = time.process_time()
    with eager_attention(model):
        analyze(model, windows, datamodule.collate, settings(
            hc, batches_per_run=args.child_batches, run_fraction=None, stream=args.child_mode == "stream",
            max_iters=2, tol=1e-12))
    return {"mode": args.child_mode, "batches": args.child_batches, "padded_lengths": lengths, "rss_before_mib": before,
            "peak_rss_mib": rss_mib(), "growth_mib": rss_mib() - before, "cpu_seconds": time.process_time() - started}


def memory(args) -> dict:
    rows = []
    for mode in ("stream", "retained"):
        for n in args.memory_batches:
            cmd = [sys.executable, __file__, "memory-child", "--child-batches", str(n), "--child-mode", mode,
                   "--clock", args.clock]
            if args.init_from:
                cmd += ["--init-from", args.init_from]
            if args.overrides:
                cmd += ["--", *args.overrides]
            done = subprocess.run(cmd, capture_output=True, text=True, check=True)
            rows.append(json.loads(done.stdout.strip().splitlines()[-1]))
            print(rows[-1], flush=True)
    run_cfg = setup(argparse.Namespace(overrides=args.overrides, init_from=None))[0]
    return {"part": "memory", **record_base(args, run_cfg), "steps": 2, "batch_size": 32, "rows": rows}


def use_cpu_clock() -> None:
    """Time the analysis in CPU seconds of this process (single thread: what a dedicated core would
    take) instead of wall seconds, which on a shared machine count the other jobs' share too."""
    import types

    from qbert.hessian import hvp, sensitivity
    clock = types.SimpleNamespace(perf_counter=time.process_time)
    hvp.time = sensitivity.time = clock


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("part", choices=("cost", "memory", "memory-child"))
    parser.add_argument("--init-from", default=None)
    parser.add_argument("--steps", type=int, default=3, help="cost: power-iteration steps timed")
    parser.add_argument("--memory-batches", type=int, nargs="+", default=[2, 8])
    parser.add_argument("--child-batches", type=int, default=2)
    parser.add_argument("--child-mode", default="stream")
    parser.add_argument("--out", default=None)
    parser.add_argument("--clock", choices=("cpu", "wall"), default="cpu",
                        help="timings in CPU seconds of the process (default) or wall seconds")
    argv = sys.argv[1:]
    split = argv.index("--") if "--" in argv else len(argv)  # qbert overrides after "--"
    args = parser.parse_args(argv[:split])
    args.overrides = argv[split + 1:]
    if args.clock == "cpu":
        use_cpu_clock()
    if args.part == "memory-child":
        print(json.dumps(memory_child(args)))
        return
    record = {"cost": cost, "memory": memory}[args.part](args)
    out = Path(args.out) if args.out else RESULTS / f"hessian_published_{args.part}_cpu.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(record, indent=1) + "\n")
    print("wrote", out)


if __name__ == "__main__":
    main()
