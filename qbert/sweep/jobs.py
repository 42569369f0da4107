"""One job of a sweep: skip it when done, resume it when interrupted, record it when it fails.

Every job writes ``job.json`` (config hash, status, times) into its folder when it starts and
updates it when it ends; ``results.json`` is written only by a finished job, ``error.json`` only by
a failed one. A later sweep finds earlier work by config hash under ``sweep.resume_root`` (by
default every sweep of the same experiment), so the folder names of earlier sweeps do not matter.
"""

from __future__ import annotations

import ctypes
import gc
import logging
import time
import traceback
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from qbert.report.collect import results_problem
from qbert.report.record import config_hash, read_json, write_results

log = logging.getLogger(__name__)

JOB_FILE = "job.json"
RESULTS_FILE = "results.json"
ERROR_FILE = "error.json"
LAST_CHECKPOINT = Path("checkpoints") / "last.ckpt"


def job_hash(cfg: DictConfig) -> str:
    """The hash results.json will carry: the resolved config, paths and logging excluded."""
    return config_hash(OmegaConf.to_container(cfg, resolve=True))


def find_finished(root: Path, chash: str, exclude: Path | None = None) -> Path | None:
    """The folder of a finished job with this config hash under ``root`` (first by name)."""
    if not root.is_dir():
        return None
    for path in sorted(root.glob(f"**/{RESULTS_FILE}")):
        if exclude is not None and path.parent == exclude:
            continue
        results = read_json(path)
        if results and results.get("config_hash") == chash and not results_problem(results):
            return path.parent
    return None


def find_resumable(root: Path, chash: str) -> Path | None:
    """The newest ``last.ckpt`` of an unfinished job with this config hash under ``root``."""
    if not root.is_dir():
        return None
    found = []
    for path in root.glob(f"**/{JOB_FILE}"):
        job = read_json(path)
        ckpt = path.parent / LAST_CHECKPOINT
        if (job and job.get("config_hash") == chash and ckpt.is_file()
                and not (path.parent / RESULTS_FILE).is_file()):
            found.append(ckpt)
    return max(found, key=lambda p: p.stat().st_mtime) if found else None


def _write_job(run_dir: Path, **fields) -> None:
    path = run_dir / JOB_FILE
    job = read_json(path) or {}
    job.update(fields)
    write_results(path, job)


def reuse(finished: Path, run_dir: Path) -> dict:
    """This job's results are those of an identical finished job: copy them, marked as reused."""
    results = read_json(finished / RESULTS_FILE)
    if results is None:  # damaged since find_finished read it
        raise RuntimeError(f"{finished / RESULTS_FILE}: no longer a readable results file")
    results["reused_from"] = str(finished)
    write_results(run_dir / RESULTS_FILE, results)
    return results


def record_failure(run_dir: Path, cfg: DictConfig, chash: str, error: BaseException) -> dict:
    """What a failed job leaves behind: enough to see why, and to re-run it."""
    failure = {
        "status": "failed",
        "config_hash": chash,
        "error_type": type(error).__name__,
        "message": str(error),
        "traceback": traceback.format_exc(),
        "task": cfg.task.name,
        "model": cfg.model.name,
        "method": cfg.quant.method,
        "experiment": cfg.experiment_name,
        "seed": cfg.seed,
        "config": OmegaConf.to_container(cfg, resolve=True),
    }
    write_results(run_dir / ERROR_FILE, failure)
    return failure


def run_job(cfg: DictConfig, multirun: bool) -> dict | None:
    """Run the pipeline on ``cfg`` as one job. In a multirun, finished work is reused, unfinished
    work resumed and a failure recorded instead of raised (unless ``sweep`` says otherwise)."""
    from qbert.pipeline import run  # heavy imports only when a job really runs

    if not multirun:
        return run(cfg)
    sweep = cfg.sweep
    run_dir = Path(cfg.output_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    chash = job_hash(cfg)
    root = Path(sweep.resume_root)
    if sweep.skip_finished:
        finished = find_finished(root, chash, exclude=run_dir)
        if finished is not None:
            log.info("job %s already finished in %s: reusing its results", chash, finished)
            print(f"[qbert] skipped (finished in {finished}): {cfg.task.name} / {cfg.quant.method} seed {cfg.seed}")
            _write_job(run_dir, config_hash=chash, status="reused", reused_from=str(finished))
            return reuse(finished, run_dir)
    resume_from = find_resumable(root, chash) if sweep.resume_unfinished else None
    if resume_from is not None:
        log.info("job %s was interrupted: resuming from %s", chash, resume_from)
    (run_dir / ERROR_FILE).unlink(missing_ok=True)
    _write_job(run_dir, config_hash=chash, status="running", started=time.time(),
               resumed_from=str(resume_from) if resume_from else None)
    try:
        results = run(cfg, resume_from=str(resume_from) if resume_from else None)
    except Exception as error:  # noqa: BLE001 - one failed job must not end the sweep
        _write_job(run_dir, status="failed", ended=time.time())
        if not sweep.isolate_failures:
            raise
        failure = record_failure(run_dir, cfg, chash, error)
        log.exception("job failed; recorded in %s", run_dir / ERROR_FILE)
        print(f"[qbert] FAILED: {failure['task']} / {failure['method']} seed {failure['seed']}: "
              f"{failure['error_type']}: {failure['message']}  (details: {run_dir / ERROR_FILE})")
        return None
    _write_job(run_dir, status="finished", ended=time.time())
    release_memory()
    return results


def release_memory() -> None:
    """Jobs of a sweep share one process: hand the last job's freed memory back to the system,
    so the peak is one job's, not the sum of fragments every job left behind."""
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc: nothing to trim
        pass
