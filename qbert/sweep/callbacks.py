"""Hydra callback: when a multirun ends, report on its folder (tables, plots, dashboard,
reproducibility report), log the table to W&B when the sweep logs there, and fail loudly,
after reporting, if any job failed (exit status 1, also with ``sweep.report=false``: Hydra turns
an exception raised in a callback into a warning, so the callback exits itself)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig


class SweepReport(Callback):
    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        sweep_dir = Path(config.hydra.sweep.dir)
        if not config.sweep.report:  # no report, but a failed job still fails the sweep
            failed = failed_jobs(sweep_dir)
            if failed:
                print(f"[qbert] {len(failed)} job(s) of the sweep FAILED (each failed folder has error.json):\n  "
                      + "\n  ".join(map(str, failed)), file=sys.stderr)
                raise SystemExit(1)
            return
        from qbert.report.cli import report  # matplotlib etc. only when a report is written

        out = sweep_dir / "report"
        try:
            summary = report([sweep_dir], out, title=f"{config.experiment_name} ({sweep_dir.name})")
        except FileNotFoundError as error:  # no job wrote anything (killed before its first file)
            print(f"[qbert] no report: {error}", file=sys.stderr)
            raise SystemExit(1) from error
        print("\n\n".join(summary["markdown"]))
        print(f"\n[qbert] sweep report: {out / 'dashboard.html'} (dashboard), {out / 'reproducibility.md'}")
        if config.logger.name == "wandb":
            log_report_to_wandb(config, summary, out)
        if summary["failures"]:
            print(f"[qbert] {len(summary['failures'])} job(s) of the sweep FAILED (the others finished and are in "
                  f"the report; each failed folder has error.json):\n  " + "\n  ".join(summary["failures"]),
                  file=sys.stderr)
            raise SystemExit(1)


def failed_jobs(sweep_dir: Path) -> list[Path]:
    """The job folders of this sweep that recorded a failure (error.json) and no results."""
    return sorted(p.parent for p in sweep_dir.glob("*/error.json") if not (p.parent / "results.json").is_file())


def log_report_to_wandb(config: DictConfig, summary: dict, out: Path) -> None:
    """One extra W&B run per sweep, in the sweep's group, holding the results table and plots."""
    import wandb

    from qbert.train.trainer import wandb_mode

    run = wandb.init(project=config.logger.project, group=config.logger.group or config.experiment_name,
                     name=f"{config.experiment_name}-report", job_type="report", dir=str(out),
                     mode=wandb_mode(config.logger.mode), reinit="finish_previous")
    for table in summary["tables"]:
        columns = ["method", "w_bits", "e_bits", "a_bits", "groups", "mean", "std", "n", "delta",
                   "paper", "size_wo_e_mib", "seeds"]
        data = [[r["method"], r["w_bits"], r["e_bits"], r["a_bits"], r["groups"], r["mean"], r["std"],
                 len(r["values"]), r["delta"], (r["paper"] or {}).get("value"), r["size_wo_e_mib"],
                 " ".join(map(str, r["seeds"]))] for r in table["rows"]]
        run.log({f"results/{table['task']}": wandb.Table(columns=columns, data=data)})
    images = {Path(f).stem: wandb.Image(f) for f in summary["files"] if f.endswith(".png")}
    if images:
        run.log(images)
    run.finish()
