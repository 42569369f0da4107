"""The jobs a sweep planned but never started (the sweep was killed, or stopped, before them).

Hydra saves the sweep's composed config as ``multirun.yaml`` before any job runs. Its sweeper
params and command-line overrides give the whole job list, expanded here exactly as Hydra's
``BasicSweeper`` expands them; a job started when a folder beside ``multirun.yaml`` holds its
``.hydra/overrides.yaml``. Each planned job that none of them holds becomes a "not started"
failure, with the config (and config hash) the job would have had, so that a re-run which
finished it elsewhere under the same report still counts it as finished.
"""

from __future__ import annotations

import logging
from pathlib import Path

from qbert.report.record import config_hash, read_yaml

log = logging.getLogger(__name__)

BASIC_SWEEPER = "hydra._internal.core_plugins.basic_sweeper.BasicSweeper"


def planned_overrides(multirun: dict) -> list[list[str]]:
    """Every job's overrides, in launch order, from a sweep's ``multirun.yaml`` content."""
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
    from hydra.core.override_parser.overrides_parser import OverridesParser

    hydra_cfg = multirun.get("hydra") or {}
    sweeper = hydra_cfg.get("sweeper") or {}
    if sweeper.get("_target_", BASIC_SWEEPER) != BASIC_SWEEPER:
        raise ValueError(f"sweeper {sweeper.get('_target_')!r}: only Hydra's basic sweeper's job list is known")
    params = [f"{k}={v}" for k, v in (sweeper.get("params") or {}).items()]
    task = list((hydra_cfg.get("overrides") or {}).get("task") or [])
    overrides = OverridesParser.create().parse_overrides(params + task)
    return [job for batch in BasicSweeper.split_arguments(overrides, None) for job in batch]


def started_overrides(sweep_dir: Path) -> set[tuple[str, ...]]:
    """The overrides of every job that started in this sweep folder."""
    started = set()
    for path in sweep_dir.glob("*/.hydra/overrides.yaml"):
        content = read_yaml(path)
        if isinstance(content, list):
            started.add(tuple(str(o) for o in content))
        else:
            log.warning("%s: not a readable overrides list (damaged); its job is counted as not started", path)
    return started


def job_config(overrides: list[str]) -> dict:
    """The resolved config a job with these overrides composes to (as ``qbert -m`` would)."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.initialize import get_gh_backup, restore_gh_from_backup
    from omegaconf import OmegaConf

    from qbert.config import CONF_DIR, register_configs

    register_configs()
    backup = get_gh_backup()  # inside a sweep's end-of-run callback Hydra is already initialised
    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
            # output_dir is Hydra's runtime folder (unknown here, and left out of the hash).
            cfg = compose(config_name="train", overrides=[*overrides, "output_dir=not-started"])
        return OmegaConf.to_container(cfg, resolve=True)
    finally:
        restore_gh_from_backup(backup)


def not_started(sweep_dir: Path, multirun: dict) -> list[tuple[Path, dict]]:
    """A failure record for every planned job of this sweep that never started."""
    started = started_overrides(sweep_dir)
    swept_keys = set(((multirun.get("hydra") or {}).get("sweeper") or {}).get("params") or {})
    found = []
    for num, overrides in enumerate(planned_overrides(multirun)):
        if tuple(overrides) in started:
            continue
        try:
            config = job_config(overrides)
        except Exception as err:  # noqa: BLE001 - a job that no longer composes is still listed
            log.warning("%s: planned job %d (%s) does not compose here: %s", sweep_dir, num, " ".join(overrides), err)
            config = {}
        swept = [o for o in overrides if o.split("=", 1)[0] in swept_keys]  # what tells it from its siblings
        found.append((sweep_dir, {
            "status": "not_started", "config_hash": config_hash(config) if config else f"{sweep_dir}#{num}",
            "error_type": "NotStarted",
            "message": f"job {num} ({' '.join(swept or overrides)}) never started: the sweep stopped before it; "
                       "re-running the sweep command runs it",
            "task": (config.get("task") or {}).get("name", "?"), "model": (config.get("model") or {}).get("name", "?"),
            "method": (config.get("quant") or {}).get("method", "none"),
            "experiment": config.get("experiment_name", "default"), "seed": config.get("seed", 0), "config": config,
        }))
    return found


def sweeps_not_started(folder: Path) -> list[tuple[Path, dict]]:
    """Not-started jobs of every sweep (a folder with ``multirun.yaml``) under ``folder``."""
    found = []
    for path in sorted(folder.glob("**/multirun.yaml")):
        content = read_yaml(path)
        if not isinstance(content, dict):
            log.warning("%s: not a readable sweep config (damaged); never-started jobs are not listed", path)
            continue
        try:
            found += not_started(path.parent, content)
        except Exception as err:  # noqa: BLE001 - an unreadable plan must not cost the report
            log.warning("%s: the sweep's job list cannot be rebuilt (%s); never-started jobs are not listed", path, err)
    return found
