"""Find every job under one or more folders and turn them into rows (``results.json`` and
``error.json`` only: the report never re-runs or re-evaluates anything).

A job found twice (a re-run sweep copies the results of a finished job, marked reused) counts
once. Jobs without results are listed too: failed (error.json), killed (job.json only) and never
started (planned by the sweep's multirun.yaml, no folder). A table with no baseline job takes its baseline from the full-precision start the
quantized jobs were fine-tuned from (``weights.init_from`` in their results).
"""

from __future__ import annotations

import logging
from pathlib import Path

from qbert.report.archive import archived_start, is_archived_start
from qbert.report.planned import sweeps_not_started
from qbert.report.record import read_json, read_yaml
from qbert.report.rows import Row, from_error, from_results

log = logging.getLogger(__name__)


def _load(path: Path) -> dict | None:
    content = read_json(path)
    if content is None:
        log.warning("skipping %s: not a readable JSON object (damaged or half-written)", path)
    return content


# What a row is built from: a results file without them would become a wrong row, not a missing one.
REQUIRED = {"primary_metric_name": str, "config": dict, "config_hash": str, "task": str}


def results_problem(results: dict) -> str | None:
    """Why a results file cannot make a row (None when it can), naming the field."""
    for key, kind in REQUIRED.items():
        if not isinstance(results.get(key), kind):
            found = "missing" if key not in results else f"a {type(results[key]).__name__}"
            return f"field '{key}' should be a {kind.__name__}, found {found}"
    metric = results.get("primary_metric")
    if isinstance(metric, bool) or not isinstance(metric, (int, float)) or metric != metric:
        return f"field 'primary_metric' should be a number, found {metric!r}"
    return None


def find_jobs(folders: list[Path]) -> tuple[list[tuple[Path, dict]], list[tuple[Path, dict]]]:
    """(finished, failed) jobs as (folder, content); a failed job later finished counts as finished."""
    finished, failed = [], []
    for folder in folders:
        if not folder.is_dir():
            raise FileNotFoundError(f"no such folder: {folder}")
        for path in sorted(folder.glob("**/results.json")):
            if is_archived_start(path):
                continue
            content = _load(path)
            problem = content and results_problem(content)
            if problem:
                log.warning("skipping %s: %s", path, problem)
            elif content:
                finished.append((path.parent, content))
        for path in sorted(folder.glob("**/error.json")):
            if not (path.parent / "results.json").is_file():
                content = _load(path)
                if content:
                    failed.append((path.parent, content))
        failed += _unfinished(folder)
        failed += sweeps_not_started(folder)
    return finished, failed


def _unfinished(folder: Path) -> list[tuple[Path, dict]]:
    """Jobs that started (job.json) but left neither results.json nor error.json: killed, or
    still running. Shown as failed rows with that reason, never dropped without a word."""
    found = []
    for path in sorted(folder.glob("**/job.json")):
        run_dir = path.parent
        if (run_dir / "results.json").is_file() or (run_dir / "error.json").is_file():
            continue
        job = _load(path)
        if not job or job.get("status") not in ("running", None):
            continue
        config = _hydra_config(run_dir / ".hydra" / "config.yaml")
        found.append((run_dir, {
            "status": "unfinished", "config_hash": job.get("config_hash", str(run_dir)),
            "error_type": "Unfinished",
            "message": "killed, or still running: job.json says it started, no results.json or error.json"
                       + (" (a checkpoint to resume from exists)" if (run_dir / "checkpoints" / "last.ckpt").is_file() else ""),
            "task": (config.get("task") or {}).get("name", "?"), "model": (config.get("model") or {}).get("name", "?"),
            "method": (config.get("quant") or {}).get("method", "none"),
            "experiment": config.get("experiment_name", "default"), "seed": config.get("seed", 0), "config": config,
        }))
    return found


def _hydra_config(path: Path) -> dict:
    content = read_yaml(path)
    if not isinstance(content, dict):
        log.warning("%s: not a readable config", path)
        return {}
    return content


def collect_rows(folders: list[Path]) -> list[Row]:
    finished, failed = find_jobs(folders)
    rows: dict[str, Row] = {}
    for folder, results in finished:
        row = from_results(results, str(folder))
        known = rows.get(row.config_hash)
        if known is None or (known.status == "reused" and row.status != "reused"):
            rows[row.config_hash] = row  # the original beats its copies
    done = set(rows)
    for folder, failure in failed:
        chash = failure.get("config_hash", str(folder))
        if chash not in done:  # failed once, finished on a re-run: it is finished
            rows.setdefault(chash, from_error(failure, str(folder)))
    _add_start_baselines(rows, [results for _, results in finished], folders)
    return list(rows.values())


def _add_start_baselines(rows: dict[str, Row], jobs: list[dict], folders: list[Path]) -> None:
    """Tables without a baseline job: the full-precision starts of their quantized jobs (from a
    report's archive when the start's own folder is gone)."""
    have_baseline = {(r.experiment, r.task, r.seed) for r in rows.values() if r.method == "Baseline"}
    for results in jobs:
        start = (results.get("weights") or {}).get("init_from")
        key = (results.get("experiment", "default"), results.get("task"), results.get("seed"))
        if not start or key in have_baseline:
            continue
        path = Path(start) / "results.json"
        if not path.is_file() and (copy := archived_start(Path(start), folders)):
            path = copy / "results.json"
        if not path.is_file():
            log.warning("baseline of %s not found: %s", results.get("config", {}).get("output_dir"), path)
            continue
        baseline = _load(path)
        if not baseline:
            continue
        row = from_results(baseline, str(path.parent))
        row.experiment = key[0]  # shown in the table of the jobs that started from it
        row.status = "start"
        rows.setdefault(f"{key[0]}:{row.config_hash}", row)
        have_baseline.add(key)
