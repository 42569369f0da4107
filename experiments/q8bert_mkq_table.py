"""Q8BERT and MKQ-BERT against full precision, for one task: the table the issue (#6) asks for.

Jobs, each a plain ``qbert`` run from the same full-precision start (``--init-from``, or the one
the pipeline makes once under the table's ``finetuned/`` folder):

    ptq8         quant=q8bert_ptq                          8-bit dynamic post-training quantization
    q8bert       quant=q8bert                              8-bit QAT, EMA ranges
    mkq          quant=mkq                                 W4A4 learned scales (LSQ) + distillation
    mkq_nokd     quant=mkq distill.enabled=false           the same without distillation
    mkq_unscaled quant=mkq quant.scale_grad=lsq_unscaled   LSQ without its gradient scaling, + KD
    mkq_scale_lr quant=mkq quant.scale_lr=1e-3             the learned scales at their own lr, + KD
    mkq_g128     quant=mkq quant.groups=128                one learned weight step per row group, + KD
    mkq_g128_nokd  the same without distillation

A job whose folder already has results.json is skipped, so an interrupted table resumes. Writes
``experiments/results/<name>.{json,md}``. Example (CPU, the committed SST-2 sample):

    python experiments/q8bert_mkq_table.py --task sst2 --name q8bert_mkq_sst2_cpu \\
        --init-from outputs/fp_starts/sst2_minilm_ec38b92f5171 -- data.source=sample \\
        optim.epochs=2 optim.lr=5e-5 quant.epochs=1 quant.lr=2e-5 trainer.save_checkpoints=false

Everything after ``--`` is passed to every job as qbert overrides.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
JOBS = {
    "ptq8": ["quant=q8bert_ptq"],
    "q8bert": ["quant=q8bert"],
    "mkq": ["quant=mkq"],
    "mkq_nokd": ["quant=mkq", "distill.enabled=false"],
    "mkq_unscaled": ["quant=mkq", "quant.scale_grad=lsq_unscaled"],
    "mkq_scale_lr": ["quant=mkq", "quant.scale_lr=1e-3"],
    "mkq_g128": ["quant=mkq", "quant.groups=128"],
    "mkq_g128_nokd": ["quant=mkq", "quant.groups=128", "distill.enabled=false"],
}
LABELS = {
    "baseline": "Full precision", "ptq8": "8-bit dynamic PTQ", "q8bert": "Q8BERT 8-bit QAT",
    "mkq": "MKQ W4A4, LSQ, distillation", "mkq_nokd": "MKQ W4A4, LSQ, no distillation",
    "mkq_unscaled": "MKQ W4A4, LSQ without gradient scaling, distillation",
    "mkq_scale_lr": "MKQ W4A4, LSQ, scales at lr 1e-3, distillation",
    "mkq_g128": "MKQ W4A4, LSQ, 128 weight groups, distillation",
    "mkq_g128_nokd": "MKQ W4A4, LSQ, 128 weight groups, no distillation",
}


def row(job: str, results: dict) -> dict:
    quant = results["config"]["quant"]
    fp = results["method"] == "none"
    return {
        "job": job, "label": LABELS.get(job, job), "method": results["method"],
        "w_bits": 32 if fp else (8 if results["method"].startswith("q8bert") else quant["w_bits"]),
        "a_bits": 32 if fp else (8 if results["method"].startswith("q8bert") else quant["a_bits"]),
        "distill": bool(results.get("distill")),
        "metric": results["primary_metric_name"], "value": results["primary_metric"],
        "metrics": results["metrics"], "size_wo_e_mib": results["size"]["encoder"]["mib"],
        "fit_seconds": results["timing_seconds"]["fit"], "wall_seconds": results["timing_seconds"]["wall"],
        "steps": results["steps"], "config_hash": results["config_hash"],
        "git": results.get("git"), "init_from": results["weights"]["init_from"],
    }


def markdown(rows: list[dict]) -> str:
    base = next((r["value"] for r in rows if r["job"] == "baseline"), None)
    lines = ["| Method | w-bits | a-bits | KD | metric | Δ vs full precision | Size w/o-e (MiB) | steps | fit (s) |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        delta = "" if base is None or r["job"] == "baseline" else f"{r['value'] - base:+.2f}"
        lines.append(f"| {r['label']} | {r['w_bits']} | {r['a_bits']} | {'yes' if r['distill'] else 'no'} | "
                     f"{r['value']:.2f} | {delta} | {r['size_wo_e_mib']:.2f} | {r['steps']} | {r['fit_seconds']:.0f} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--task", required=True)
    parser.add_argument("--name", required=True, help="table name: outputs/q8bert_mkq/<name>/, results/<name>.*")
    parser.add_argument("--jobs", default=",".join(JOBS))
    parser.add_argument("--init-from", default=None, help="the full-precision start (default: made once)")
    parser.add_argument("overrides", nargs="*", help="qbert overrides, after --")
    args = parser.parse_args()

    root = REPO / "outputs" / "q8bert_mkq" / args.name
    common = [f"task={args.task}", f"finetuned_dir={root / 'finetuned'}", f"experiment_name={args.name}",
              "trainer.enable_progress_bar=false", *args.overrides]
    if args.init_from:
        common.append(f"init_from={Path(args.init_from).resolve()}")
    started = time.time()
    commands = {}
    for job in args.jobs.split(","):
        out = root / job
        command = [sys.executable, "-m", "qbert.cli", *JOBS[job], *common, f"output_dir={out}"]
        commands[job] = " ".join(command[1:])
        if (out / "results.json").is_file():
            print(f"[table] {job}: done already, skipped", flush=True)
            continue
        print(f"[table] {job}: {commands[job]}", flush=True)
        subprocess.run(command, cwd=REPO, check=True)

    jobs = {job: json.loads((root / job / "results.json").read_text()) for job in commands
            if (root / job / "results.json").is_file()}
    start = next(iter(jobs.values()))["weights"]["init_from"]
    baseline = json.loads((Path(start) / "results.json").read_text())
    rows = [row("baseline", baseline)] + [row(job, r) for job, r in jobs.items()]
    out = REPO / "experiments" / "results"
    out.mkdir(parents=True, exist_ok=True)
    summary = {"task": args.task, "name": args.name, "commands": commands, "wall_seconds": time.time() - started,
               "rows": rows}
    (out / f"{args.name}.json").write_text(json.dumps(summary, indent=2) + "\n")
    (out / f"{args.name}.md").write_text(markdown(rows) + "\n")
    print(markdown(rows))


if __name__ == "__main__":
    main()
