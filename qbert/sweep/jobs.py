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

from qbert.report.archive import in_archive
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


_warned: set[str] = set()  # each damaged file is named once per process, not once per job of a sweep


def _skip(path: Path, why: str, consequence: str) -> None:
    if str(path) not in _warned:
        _warned.add(str(path))
        log.warning("skipping %s: %s; %s", path, why, consequence)


def find_finished(root: Path, chash: str, own: Path | None = None) -> Path | None:
    """The folder of a finished job with this config hash: the job's ``own`` folder first (the
    same sweep re-run into the same ``hydra.sweep.dir``), else the first by name under ``root``,
    copies in a report's ``jobs/`` archive aside. A damaged results file is skipped, naming it: if
    it was this job's, the job runs again."""
    candidates = [own / RESULTS_FILE] if own is not None else []
    if root.is_dir():
        candidates += sorted(p for p in root.glob(f"**/{RESULTS_FILE}") if not in_archive(p))
    for path in candidates:
        if not path.is_file():
            continue
        results = read_json(path)
        problem = "not a readable JSON object (damaged or half-written)" if results is None else results_problem(results)
        if problem:
            _skip(path, problem, "its job, if it is one of this sweep's, runs again")
        elif results.get("config_hash") == chash:
            return path.parent
    return None


def find_resumable(root: Path, chash: str) -> Path | None:
    """The newest ``last.ckpt`` of an unfinished job with this config hash under ``root``."""
    if not root.is_dir():
        return None
    found = []
    for path in root.glob(f"**/{JOB_FILE}"):
        if in_archive(path):
            continue
        ckpt = path.parent / LAST_CHECKPOINT
        if not ckpt.is_file() or (path.parent / RESULTS_FILE).is_file():
            continue  # nothing to resume from, or finished
        job = read_json(path)
        if job is None:
            _skip(path, "not a readable JSON object (damaged or half-written)",
                  f"its checkpoint {ckpt} cannot be matched to a config and is not resumed")
        elif job.get("config_hash") == chash:
            if checkpoint_readable(ckpt):
                found.append(ckpt)
            else:
                _skip(ckpt, "not a readable checkpoint (truncated or damaged)", "its job starts over")
    return max(found, key=lambda p: p.stat().st_mtime) if found else None


def checkpoint_readable(path: Path) -> bool:
    """Whether a checkpoint can be resumed from, as far as a cheap look tells: torch writes a zip
    archive, and a truncated or overwritten one has no readable zip directory. Resuming from an
    unreadable one would fail the job every time it is re-run."""
    import zipfile

    return zipfile.is_zipfile(path)


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
    if not multirun:
        preflight(cfg)
        from qbert.pipeline import run  # heavy imports only when a job really runs
        return run(cfg)
    sweep = cfg.sweep
    run_dir = Path(cfg.output_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    chash = job_hash(cfg)
    root = Path(sweep.resume_root)
    if sweep.skip_finished:
        finished = find_finished(root, chash, own=run_dir)
        if finished == run_dir:  # this very folder finished it earlier: keep its results as they are
            log.info("job %s already finished in this folder %s: keeping its results", chash, run_dir)
            print(f"[qbert] skipped (finished earlier in this folder): {cfg.task.name} / {cfg.quant.method} seed {cfg.seed}")
            _write_job(run_dir, config_hash=chash, status="finished")  # a killed re-run may have said "running"
            return read_json(run_dir / RESULTS_FILE)
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
        preflight(cfg)
        from qbert.pipeline import run  # heavy imports only when a job really runs
        results = run(cfg, resume_from=str(resume_from) if resume_from else None)
    except Exception as error:  # noqa: BLE001 - one failed job must not end the sweep
        _write_job(run_dir, status="failed", ended=time.time())
        if not sweep.isolate_failures:
            raise
        failure = record_failure(run_dir, cfg, chash, error)
        # the traceback is in error.json: on the console it would bury the message
        log.error("job failed (%s: %s); traceback and config in %s", failure["error_type"], failure["message"],
                  run_dir / ERROR_FILE)
        print(f"[qbert] FAILED: {failure['task']} / {failure['method']} seed {failure['seed']}: "
              f"{failure['error_type']}: {failure['message']}  (details: {run_dir / ERROR_FILE})")
        return None
    _write_job(run_dir, status="finished", ended=time.time())
    release_memory()
    return results


def preflight(cfg: DictConfig) -> None:
    """Everything that can be refused before the training stack loads (a few seconds instead
    of half a minute, and before anything trains): every config check, the folders it starts
    from (init_from, distill.teacher) existing, and every data file the run will read, through
    its strict reader (a damaged test split found only after training would throw the training
    away). Hub data is checked when it is downloaded."""
    from qbert.config import validate
    from qbert.data.sources import load_split, splits_of

    run_cfg = validate(cfg)
    for key, path in (("init_from", run_cfg.init_from), ("distill.teacher", run_cfg.distill.teacher)):
        if path and not Path(path).exists():
            raise FileNotFoundError(f"config key '{key}': {path} does not exist")
    if run_cfg.data.source == "hub":
        return
    splits = splits_of(run_cfg.task, run_cfg.data)
    # an evaluation-only run reads its test splits (and, to calibrate, its training split: the
    # calibration batches come from it, and the pipeline names it if it is damaged)
    needed = [*splits.test] if run_cfg.eval_only else [splits.train, splits.val, *splits.test]
    for split in dict.fromkeys(needed):
        load_split(run_cfg.task, run_cfg.data, split)


def release_memory() -> None:
    """Jobs of a sweep share one process: hand the last job's freed memory back to the system,
    so the peak is one job's, not the sum of fragments every job left behind."""
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc: nothing to trim
        pass
