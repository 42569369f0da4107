"""Full-precision baselines: fine-tune a model on each task and collect the metrics as JSON.

Runs one Hydra multirun (one job per task) through the `qbert` entry point, then reads every
job's results.json. Example (full local data, one GPU):

    python experiments/baselines.py --tasks sst2 mnli conll03 squad -- \
        trainer=gpu data.source=local data.root=../shared/data

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


def collect(sweep_dir: Path) -> list[dict]:
    rows = []
    for path in sorted(sweep_dir.glob("*/results.json")):
        r = json.loads(path.read_text())
        rows.append({
            "task": r["task"], "model": r["model"], "method": r["method"], "seed": r["seed"],
            "metrics": r["metrics"], "primary_metric": r["primary_metric_name"],
            "value": r["primary_metric"], "protocol_note": r["data"]["protocol_note"],
            "data_root": r["data"]["root"], "optim": r["config"]["optim"],
            "max_length": r["config"]["task"]["max_length"], "steps": r["steps"],
            "seconds": r["timing_seconds"], "device": r["device"], "git": r["git"],
            "config_hash": r["config_hash"], "run_dir": str(path.parent),
        })
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tasks", nargs="+", default=["sst2", "mnli", "conll03", "squad"])
    parser.add_argument("--name", default="baselines", help="experiment name (sweep folder)")
    parser.add_argument("--out", type=Path, default=None, help="JSON summary (default: <sweep>/baselines.json)")
    parser.add_argument("overrides", nargs="*", help="qbert overrides, after --")
    args = parser.parse_args()

    stamp = time.strftime("%Y-%m-%d_%H-%M-%S")
    sweep_dir = REPO / "outputs" / "multirun" / args.name / stamp
    command = [sys.executable, "-m", "qbert.cli", "-m", f"task={','.join(args.tasks)}",
               f"experiment_name={args.name}", f"hydra.sweep.dir={sweep_dir}", *args.overrides]
    print("running:", " ".join(command), flush=True)
    started = time.perf_counter()
    subprocess.run(command, cwd=REPO, check=True)
    summary = {"command": " ".join(command), "wall_seconds": time.perf_counter() - started,
               "runs": collect(sweep_dir)}
    out = args.out or sweep_dir / "baselines.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(summary, indent=2) + "\n")
    for row in summary["runs"]:
        print(f"{row['task']:8s} {row['primary_metric']:22s} {row['value']:.2f}  "
              f"(fit {row['seconds']['fit']:.0f} s)")
    print("wrote", out)


if __name__ == "__main__":
    main()
