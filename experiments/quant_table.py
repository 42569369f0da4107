"""DirectQ vs Q-BERT (vs Q-BERT MP) after quantization-aware fine-tuning, at w-bits 8/4/3/2 (e8, a8): one task.

One Hydra multirun: the first job fine-tunes the full-precision start (stored under the sweep's
``finetuned/`` folder), every job reuses it and fine-tunes its quantized copy. Writes
``<sweep>/quant_table.json`` and a Markdown table with the size column. Example (CPU, the
committed SST-2 sample, one QAT epoch):

    python experiments/quant_table.py --task sst2 --name qbert_sst2_cpu -- \
        data.source=sample optim.epochs=2 quant.epochs=1

``--mp`` adds Q-BERT MP rows in two more multiruns under the same folder: the paper's rule at
2/3 and 2/4 bits, and the integer-program allocation at the 2/3 rule's size. The Hessian
analysis runs in the first MP job and is reused by the others (and by any later sweep of the same
weights, data and analysis settings: ``hessian.cache_dir``, default ``outputs/hessian``).

Everything after ``--`` is passed to qbert as overrides.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
METHOD_NAMES = {"none": "Baseline", "directq": "DirectQ", "qbert": "Q-BERT", "qbert_mp": "Q-BERT MP"}
MP_SWEEPS = {"mp": ["quant=qbert_mp", "quant.w_bits=2", "quant.high_bits=3,4"],
             "mp_ilp": ["quant=qbert_mp", "quant.w_bits=2", "quant.high_bits=3", "quant.allocation=ilp"]}


def _method(results: dict) -> str:
    name = METHOD_NAMES.get(results["method"], results["method"])
    quant = results["config"]["quant"]
    if results["method"] == "qbert_mp":
        name += {"ilp": " ILP", "manual": " manual"}.get(quant["allocation"], f" {quant['w_bits']}/{quant['high_bits']}")
        if quant["allocation"] != "manual" and results["config"]["hessian"]["sensitivity"] == "trace":
            name += " (trace)"
    return name


def row(results: dict) -> dict:
    quant = results["config"]["quant"]
    size = results["size"]
    mp = results.get("mixed_precision")
    return {
        "method": _method(results),
        "w_bits": (32 if results["method"] == "none" else
                   round(mp["mean_bits"], 2) if mp else quant["w_bits"]),
        "layer_bits": mp["bits"] if mp else None,
        "e_bits": quant["e_bits"] if results["method"] != "none" else 32,
        "a_bits": quant["a_bits"] if results["method"] != "none" else 32,
        "groups": quant["groups"] if results["method"] in ("qbert", "qbert_mp") else 1,
        "metric": results["primary_metric_name"], "value": results["primary_metric"],
        "metrics": results["metrics"], "size_wo_e_mib": size["encoder"]["mib"],
        "embedding_mib": size["embeddings"]["mib"], "fit_seconds": results["timing_seconds"]["fit"],
        "steps": results["steps"], "config_hash": results["config_hash"],
    }


def collect(sweep_dir: Path) -> list[dict]:
    jobs = [json.loads(p.read_text()) for p in sorted(sweep_dir.glob("**/results.json"))
            if "finetuned" not in p.relative_to(sweep_dir).parts]
    # The baseline is the full-precision start the jobs were fine-tuned from.
    starts = sorted({j["weights"]["init_from"] for j in jobs if j["weights"]["init_from"]})
    baselines = [json.loads((Path(s) / "results.json").read_text()) for s in starts]
    rows = [row(r) for r in baselines + jobs]
    return sorted(rows, key=lambda r: (r["method"] != "Baseline", -r["w_bits"], r["method"]))


def markdown(rows: list[dict]) -> str:
    base = next((r["value"] for r in rows if r["method"] == "Baseline"), None)
    lines = ["| Method | w-bits | e-bits | a-bits | groups | metric | Δ vs baseline | Size w/o-e (MiB) |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        delta = "" if base is None or r["method"] == "Baseline" else f"{r['value'] - base:+.2f}"
        w = r["w_bits"] if r["layer_bits"] is None else f"{r['w_bits']} ({'/'.join(map(str, r['layer_bits']))})"
        lines.append(f"| {r['method']} | {w} | {r['e_bits']} | {r['a_bits']} | {r['groups']} | "
                     f"{r['value']:.2f} | {delta} | {r['size_wo_e_mib']:.2f} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--task", help="sst2 | mnli | conll03 | squad (required unless --collect)")
    parser.add_argument("--bits", default="8,4,3,2")
    parser.add_argument("--methods", default="directq,qbert")
    parser.add_argument("--name", default=None, help="experiment name (sweep folder)")
    parser.add_argument("--mp", action="store_true", help="add Q-BERT MP 2/3, 2/4 and ILP rows")
    parser.add_argument("--collect", type=Path, default=None, help="only (re)write the table of a finished sweep")
    parser.add_argument("overrides", nargs="*", help="qbert overrides, after --")
    args = parser.parse_args()
    if args.collect:  # keep the commands and wall time of the run that made the sweep
        previous = args.collect / "quant_table.json"
        known = json.loads(previous.read_text()) if previous.is_file() else {}
        return write_table(args.collect, collect(args.collect), known.get("command"), known.get("wall_seconds"))
    if not args.task:
        parser.error("--task is required (or --collect SWEEP_DIR)")

    name = args.name or f"quant_table_{args.task}"
    sweep_dir = REPO / "outputs" / "multirun" / name / time.strftime("%Y-%m-%d_%H-%M-%S")
    command = [sys.executable, "-m", "qbert.cli", "-m", f"task={args.task}", f"quant={args.methods}",
               f"quant.w_bits={args.bits}", f"experiment_name={name}", f"hydra.sweep.dir={sweep_dir}",
               f"finetuned_dir={sweep_dir / 'finetuned'}", *args.overrides]
    commands = [command]
    if args.mp:
        base = [a for a in command if not a.startswith(("quant=", "quant.w_bits=", "hydra.sweep.dir="))]
        for sub, overrides in MP_SWEEPS.items():
            commands.append([*base[:4], *overrides, *base[4:], f"hydra.sweep.dir={sweep_dir / sub}"])
    started = time.perf_counter()
    for cmd in commands:
        print("running:", " ".join(map(str, cmd)), flush=True)
        subprocess.run(cmd, cwd=REPO, check=True)
    write_table(sweep_dir, collect(sweep_dir), "\n".join(" ".join(map(str, c)) for c in commands),
                time.perf_counter() - started)


def write_table(sweep_dir: Path, rows: list[dict], command: str | None, wall_seconds: float | None) -> None:
    summary = {"command": command, "wall_seconds": wall_seconds, "rows": rows}
    (sweep_dir / "quant_table.json").write_text(json.dumps(summary, indent=2) + "\n")
    table = markdown(rows)
    (sweep_dir / "quant_table.md").write_text(table + "\n")
    print(table)
    print("wrote", sweep_dir / "quant_table.json")


if __name__ == "__main__":
    main()
