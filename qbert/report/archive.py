"""Keep the small files a report was built from inside the report (``<out>/jobs/``).

Sweep folders live outside the checkout and do not always survive (a new machine, a cleaned
disk); a committed report then cannot be rebuilt, and a later seed cannot be averaged with it.
Copying each job's ``results.json`` (and ``error.json``, ``job.json``, ``.hydra`` overrides and
config), each sweep's ``multirun.yaml`` and the full-precision starts' ``results.json`` makes the
report folder itself a valid input: ``qbert-report <report> <new sweep>`` rebuilds the tables with
the new seed beside the old ones. No checkpoints: a few tens of kB per job.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from qbert.report.rows import Row

ARCHIVE = "jobs"  # inside a report folder
STARTS = "_starts"  # inside ARCHIVE: the full-precision starts that stand in for missing baselines
JOB_FILES = ("results.json", "error.json", "job.json", ".hydra/overrides.yaml", ".hydra/config.yaml")


def is_report(folder: Path) -> bool:
    return (folder / "summary.json").is_file() and (folder / ARCHIVE).is_dir()


def in_archive(path: Path) -> bool:
    """Whether ``path`` lies inside a report's archive: a copy of a job, never a job a sweep may
    reuse or resume (its original may have been deleted on purpose, to run it again)."""
    return any(parent.name == ARCHIVE and is_report(parent.parent) for parent in path.parents)


def archived_path(path: Path, folders: list[Path]) -> Path:
    """Where a job or sweep folder goes inside the archive: its path below the input folder it was
    found in, under that folder's name (a report's own archive keeps its layout, so rebuilding a
    report from itself does not nest it)."""
    for folder in folders:
        try:
            relative = path.resolve().relative_to(folder.resolve())
        except ValueError:
            continue
        parts = relative.parts
        for i in range(len(parts) - 1, -1, -1):  # the innermost archive the path lies in
            if parts[i] == ARCHIVE and is_report(folder.joinpath(*parts[:i])):
                return Path(*parts[i + 1:])
        return Path(folder.name) / relative
    return Path(path.name)  # not reached for paths found under the folders


def _copy_job(source: Path, target: Path) -> list[Path]:
    copied = []
    for name in JOB_FILES:
        if (source / name).is_file():
            (target / name).parent.mkdir(parents=True, exist_ok=True)
            if (source / name).resolve() != (target / name).resolve():
                shutil.copyfile(source / name, target / name)
            copied.append(target / name)
    return copied


def _job_folders(folder: Path) -> list[Path]:
    """Every job folder under ``folder`` (finished, failed or killed), the archive's own starts aside."""
    found = {p.parent for name in ("results.json", "error.json", "job.json") for p in folder.glob(f"**/{name}")}
    return sorted(p for p in found if not is_archived_start(p / "results.json"))


def archive_jobs(rows: list[Row], folders: list[Path], out_dir: Path) -> list[Path]:
    """Copy every job folder's small files, each sweep's plan and the starts the rows were measured
    against into ``out_dir/jobs``; returns the files written."""
    archive, written = out_dir / ARCHIVE, []
    for folder in folders:
        for job in _job_folders(folder):
            written += _copy_job(job, archive / archived_path(job, folders))
        for multirun in sorted(folder.glob("**/multirun.yaml")):
            target = archive / archived_path(multirun.parent, folders) / "multirun.yaml"
            target.parent.mkdir(parents=True, exist_ok=True)
            if multirun.resolve() != target.resolve():
                shutil.copyfile(multirun, target)
            written.append(target)
    for row in rows:
        if row.status == "start" and row.path and Path(row.path).is_dir():
            written += _copy_job(Path(row.path), archive / STARTS / Path(row.path).name)
    return written


def is_archived_start(path: Path) -> bool:
    """A start's results inside a report's archive: read as a baseline for the jobs that name it, not
    as a job. Only inside a report (as ``in_archive``): a user's own ``jobs/_starts/...`` folder is jobs."""
    starts = path.parent.parent
    return starts.name == STARTS and starts.parent.name == ARCHIVE and is_report(starts.parent.parent)


def archived_start(start: Path, folders: list[Path]) -> Path | None:
    """The archived copy of a full-precision start's folder, for a start whose folder is gone."""
    for folder in folders:
        for candidate in sorted(folder.glob(f"**/{ARCHIVE}/{STARTS}/{start.name}/results.json")):
            return candidate.parent
    return None
