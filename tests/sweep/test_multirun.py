"""Real multiruns of the `qbert` command (tiny model, committed slices, CPU): results, report and
dashboard at the end; a re-run skips finished jobs; a failing job neither stops the others nor
goes unreported; an interrupted job resumes from its last checkpoint; W&B runs offline."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from qbert_testing import FAST

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[2]
TINY = [*FAST, "trainer.log_every_n_steps=1"]


def qbert_multirun(tmp_path: Path, sweep: str, *overrides: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "qbert.cli", "-m", "experiment=qbert_sst2_demo", *TINY,
           f"hydra.sweep.dir={tmp_path / sweep}", f"finetuned_dir={tmp_path / 'finetuned'}",
           f"sweep.resume_root={tmp_path}", f"hessian.cache_dir={tmp_path / 'hessian'}", *overrides]
    env = {**os.environ, "WANDB_MODE": "offline", "HF_HUB_OFFLINE": "1", "MPLBACKEND": "Agg"}
    return subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, env=env, timeout=600)


def job_dirs(sweep: Path) -> dict[str, Path]:
    return {p.name.split("_")[2]: p for p in sweep.iterdir() if (p / ".hydra").is_dir()}


def job_numbers(sweep: Path) -> dict[int, Path]:
    return {int(p.name.split("_")[0]): p for p in sweep.iterdir() if (p / ".hydra").is_dir()}


def test_sweep_isolates_a_failure_reports_it_and_a_rerun_skips_finished_jobs(tmp_path):
    # quant.groups=3 divides no row count of the tiny model (32, 64): that job fails; the one
    # with 16 groups finishes.
    first = qbert_multirun(tmp_path, "first", "row=qbert_w2", "quant.groups=16,3", "logger=wandb")
    assert first.returncode == 1, first.stdout[-3000:] + first.stderr[-3000:]
    assert "1 job(s) of the sweep FAILED" in first.stderr
    jobs = job_numbers(tmp_path / "first")
    assert (jobs[0] / "results.json").is_file()
    error = json.loads((jobs[1] / "error.json").read_text())
    assert error["error_type"] == "ValueError" and "groups=3" in error["message"]
    assert "Traceback" in error["traceback"] and not (jobs[1] / "results.json").exists()
    assert json.loads((jobs[1] / "job.json").read_text())["status"] == "failed"
    report = tmp_path / "first" / "report"
    for name in ("dashboard.html", "reproducibility.md", "reproducibility.html", "summary.json",
                 "qbert_sst2_demo_sst2_tiny.md", "qbert_sst2_demo_sst2_tiny.csv"):
        assert (report / name).is_file(), name
    table = (report / "qbert_sst2_demo_sst2_tiny.md").read_text()
    assert "| Baseline |" in table and "| Q-BERT | 2 | 8 | 8 | 16 |" in table and "| Q-BERT | 2 | 8 | 8 | 3 | failed |" in table
    assert "Failed: Q-BERT 2: seed 42: ValueError" in table
    assert "| Q-BERT | 2 | 8 | 8 | 16 |" in first.stdout  # the table is printed at the end
    # W&B, offline without credentials: a run for the job that trained (the failed one stopped
    # before its logger started), plus one run holding the sweep's table
    runs = list((jobs[0] / "wandb").glob("offline-run-*"))
    assert len(runs) == 1 and list(runs[0].glob("*.wandb"))
    assert len(list((report / "wandb").glob("offline-run-*"))) == 1

    # the same sweep again: the finished job is not recomputed, the failed one runs (and fails) again
    second = qbert_multirun(tmp_path, "second", "row=qbert_w2", "quant.groups=16,3", "logger=wandb")
    assert second.returncode == 1
    jobs2 = job_numbers(tmp_path / "second")
    job = json.loads((jobs2[0] / "job.json").read_text())
    assert job["status"] == "reused" and job["reused_from"] == str(jobs[0])
    copied = json.loads((jobs2[0] / "results.json").read_text())
    original = json.loads((jobs[0] / "results.json").read_text())
    assert copied["reused_from"] == str(jobs[0]) and copied["metrics"] == original["metrics"]
    assert not (jobs2[0] / "model").exists()  # nothing was trained
    assert (jobs2[1] / "error.json").is_file()
    assert "skipped (finished in" in second.stdout

    # the same command into the same sweep folder (how a killed table is continued): the finished
    # job keeps its folder's results untouched, the failed one runs again
    results_file = jobs[0] / "results.json"
    before = (results_file.read_bytes(), results_file.stat().st_mtime_ns)
    third = qbert_multirun(tmp_path, "first", "row=qbert_w2", "quant.groups=16,3", "logger=wandb")
    assert third.returncode == 1
    assert "skipped (finished earlier in this folder): sst2 / qbert seed 42" in third.stdout, third.stdout[-3000:]
    assert (results_file.read_bytes(), results_file.stat().st_mtime_ns) == before
    assert json.loads((jobs[0] / "job.json").read_text())["status"] == "finished"
    assert len(list((jobs[0] / "wandb").glob("offline-run-*"))) == 1  # nothing trained or logged again


def test_interrupted_job_resumes_from_its_last_checkpoint(tmp_path):
    done = qbert_multirun(tmp_path, "first", "row=directq_w2", "trainer.save_checkpoints=true")
    assert done.returncode == 0, done.stderr[-3000:]
    job = job_dirs(tmp_path / "first")["directq"]
    assert (job / "checkpoints" / "last.ckpt").is_file()
    import torch

    saved_step = torch.load(job / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)["global_step"]
    # what a job killed after its last checkpoint leaves behind
    (job / "results.json").unlink()
    state = json.loads((job / "job.json").read_text())
    (job / "job.json").write_text(json.dumps({**state, "status": "running"}))
    again = qbert_multirun(tmp_path, "second", "row=directq_w2", "trainer.save_checkpoints=true")
    assert again.returncode == 0, again.stderr[-3000:]
    resumed = json.loads((job_dirs(tmp_path / "second")["directq"] / "results.json").read_text())
    assert resumed["resumed_from"] == str(job / "checkpoints" / "last.ckpt")
    # training went on from the checkpoint's step (not from 0) and the job finished afresh
    assert resumed["steps"] >= saved_step >= 1 and "reused_from" not in resumed
    log = (job_dirs(tmp_path / "second")["directq"] / "cli.log").read_text()
    assert f"was interrupted: resuming from {job / 'checkpoints' / 'last.ckpt'}" in log
