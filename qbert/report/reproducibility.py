"""The reproducibility report of a sweep: environment, exact commands, config hashes, seeds and
variance, data provenance, protocol notes and paper-vs-ours tables, as Markdown (and as sections
for the HTML version). Everything comes from files the jobs wrote; nothing is re-run."""

from __future__ import annotations

import json
import platform
import shlex
import time
from dataclasses import dataclass, field
from pathlib import Path


from qbert.report.record import read_json, read_yaml
from qbert.report.rows import Row
from qbert.report.tables import Table, markdown


@dataclass
class Sweep:
    """One Hydra multirun found under the report's folders (its ``multirun.yaml``)."""

    folder: str
    command: str
    sweeper_params: dict
    jobs: int
    wall_seconds: float | None  # first job start to last job end (from job.json), when recorded
    job_wall_seconds: float = 0.0  # the sum of its jobs' own wall times (results.json), reused ones excluded
    other_jobs: int = 0  # jobs in the folder this command did not plan: an earlier command into the same folder


@dataclass
class JobInfo:
    folder: str
    command: str
    config_hash: str
    seed: int
    status: str
    wall_seconds: float | None
    results: dict = field(default_factory=dict)


def _overrides(folder: Path) -> list[str]:
    return list(read_yaml(folder / ".hydra" / "overrides.yaml") or [])


def command_line(overrides: list[str], multirun: bool = False) -> str:
    return " ".join(["qbert", *(["-m"] if multirun else []), *(shlex.quote(o) for o in overrides)])


def _planned_jobs(multirun: dict) -> set[frozenset[str]] | None:
    """The overrides of every job this sweep's command plans (as sets: one key each, and the order is
    the sweeper's business); None when they cannot be rebuilt."""
    from qbert.report.planned import planned_overrides

    try:
        return {frozenset(str(o) for o in job) for job in planned_overrides(multirun)}
    except Exception:  # noqa: BLE001 - another sweeper, or a damaged plan: every job counts as this command's
        return None


def find_sweeps(folders: list[Path]) -> list[Sweep]:
    """Every sweep under the folders. Hydra keeps only the last command's ``multirun.yaml`` in a sweep
    folder, so the jobs an earlier command left there are counted apart (their own commands are in the
    job table) and the sweep's walls cover this command's jobs only. A sweep found twice (the folder
    and a report's copy of it, see qbert.report.archive) counts once."""
    sweeps, seen = [], set()
    for folder in folders:
        for path in sorted(folder.glob("**/multirun.yaml")):
            cfg = read_yaml(path)
            if not isinstance(cfg, dict):  # unreadable or not a Hydra multirun file
                continue
            hydra = cfg.get("hydra") or {}
            task_overrides = ((hydra.get("overrides") or {}).get("task")) or []
            params = ((hydra.get("sweeper") or {}).get("params")) or {}
            planned = _planned_jobs(cfg)
            job_dirs = [p for p in sorted(path.parent.iterdir())
                        if p.is_dir() and ((p / "job.json").is_file() or (p / ".hydra").is_dir())]
            identity = (command_line(task_overrides, multirun=True), tuple(p.name for p in job_dirs))
            if identity in seen:
                continue
            seen.add(identity)
            starts, ends, jobs, other_jobs, job_wall = [], [], 0, 0, 0.0
            for job_dir in job_dirs:
                overrides = frozenset(str(o) for o in _overrides(job_dir))
                if planned is not None and overrides and overrides not in planned:
                    other_jobs += 1
                    continue
                jobs += 1
                info = read_json(job_dir / "job.json") if (job_dir / "job.json").is_file() else None
                if info:
                    if info.get("started") is not None:
                        starts.append(info["started"])
                    if info.get("ended") is not None:
                        ends.append(info["ended"])
                results = read_json(job_dir / "results.json") if (job_dir / "results.json").is_file() else None
                if results and not results.get("reused_from"):
                    job_wall += float((results.get("timing_seconds") or {}).get("wall") or 0.0)
            wall = max(ends) - min(starts) if starts and ends else None
            sweeps.append(Sweep(str(path.parent), command_line(task_overrides, multirun=True), dict(params),
                                jobs, wall, job_wall, other_jobs))
    return sweeps


def job_infos(rows: list[Row], results_by_folder: dict[str, dict]) -> list[JobInfo]:
    infos = []
    for r in rows:
        if r.path is None:
            continue
        folder = Path(r.path)
        overrides = _overrides(folder)
        command = (command_line(overrides) if overrides else
                   "(never started: re-run the sweep's command)" if r.status == "not started" else "(not a Hydra job folder)")
        infos.append(JobInfo(str(folder), command,
                             r.config_hash, r.seed, r.status, r.wall_seconds, results_by_folder.get(str(folder), {})))
    return infos


def environments(infos: list[JobInfo]) -> list[dict]:
    """Distinct (git, versions, device) combinations across the jobs, with how many jobs each."""
    seen: dict[str, dict] = {}
    for info in infos:
        res = info.results
        if not res:
            continue
        env = {"git_sha": (res.get("git") or {}).get("sha"), "git_dirty": (res.get("git") or {}).get("dirty"),
               "cwd_git": res.get("cwd_git"), "device": res.get("device"), "versions": res.get("versions")}
        key = json.dumps(env, sort_keys=True, default=str)
        seen.setdefault(key, {**env, "jobs": 0})["jobs"] += 1
    return list(seen.values())


def data_provenance(infos: list[JobInfo]) -> list[dict]:
    seen: dict[str, dict] = {}
    for info in infos:
        data = info.results.get("data")
        if data:
            entry = {"task": info.results.get("task"), **data}
            seen.setdefault(json.dumps(entry, sort_keys=True, default=str), entry)
    return list(seen.values())


def _dirty(flag: bool | None) -> str:
    return {True: " (uncommitted changes)", False: " (clean)", None: " (unknown)"}[flag]


def _code_version(env: dict) -> str:
    """Which code ran: the checkout it was imported from or, for an installed package (no checkout
    to read), the checkout the job was started in, which is where a worktree install comes from."""
    if env["git_sha"] or not env.get("cwd_git"):
        return f"git `{env['git_sha']}`{_dirty(env['git_dirty'])}"
    cwd = env["cwd_git"]
    return (f"installed package (no checkout to read), started in checkout `{cwd.get('sha')}`{_dirty(cwd.get('dirty'))}"
            " (the version is in the versions line)")


def render_markdown(title: str, folders: list[Path], tables: list[Table], sweeps: list[Sweep],
                    infos: list[JobInfo]) -> str:
    out = [f"# {title}", "",
           f"Generated {time.strftime('%Y-%m-%d %H:%M:%S %Z')} on {platform.node() or 'this machine'} by "
           f"`qbert-report` from the `results.json` / `error.json` files under: "
           + ", ".join(f"`{f}`" for f in folders) + ".", ""]
    out += ["## Results: ours beside the paper", "",
            "Mean ± sample std over seeds; Δ against our own baseline (same model, data and seeds); the paper's "
            "value and its Δ against the paper's baseline. Our model is not the paper's: compare the Δ columns. "
            "Sizes: ours in MiB (2^20 bytes); the paper's as printed in its tables, in MB.", ""]
    for table in tables:
        out += [markdown(table), ""]
    out += ["## Seeds and variance", "", "| table | method | w-bits | seeds | values | mean | std |", "|---|---|---|---|---|---|---|"]
    for table in tables:
        for r in table.rows:
            values = ", ".join(f"{v:.2f}" for v in r.values)
            out.append(f"| {table.task} | {r.method} | {r.w_bits} | {','.join(map(str, r.seeds))} | {values} | "
                       f"{'' if r.mean is None else f'{r.mean:.2f}'} | {'' if r.std is None else f'{r.std:.2f}'} |")
    out += ["", "## Commands", ""]
    for s in sweeps:
        wall = f", wall {s.wall_seconds:.0f} s" if s.wall_seconds is not None else ""
        wall += f", jobs' own wall times sum to {s.job_wall_seconds:.0f} s" if s.job_wall_seconds else ""
        out += [f"Sweep `{s.folder}` ({s.jobs} jobs{wall}):", "", "```bash", s.command, "```"]
        if s.other_jobs:
            out += ["", f"and {s.other_jobs} job(s) an earlier command left in the same folder (Hydra keeps only the "
                        "last command's `multirun.yaml`): their own commands are in the job table below, and the "
                        "walls above leave them out."]
        if s.sweeper_params:
            out += ["", "sweep axes: " + "; ".join(f"`{k}` = {v}" for k, v in s.sweeper_params.items())]
        out.append("")
    out += ["Each job, re-runnable on its own (`qbert` + the job's overrides from its `.hydra/overrides.yaml`):", "",
            "| config hash | seed | status | wall (s) | command |", "|---|---|---|---|---|"]
    for info in sorted(infos, key=lambda i: i.folder):
        wall = "" if info.wall_seconds is None else f"{info.wall_seconds:.0f}"
        out.append(f"| `{info.config_hash}` | {info.seed} | {info.status} | {wall} | `{info.command}` |")
    out += ["", "## Environment", ""]
    for env in environments(infos):
        out += [f"- {env['jobs']} job(s): {_code_version(env)}; device `{json.dumps(env['device'])}`",
                "  - versions: " + ", ".join(f"{k} {v}" for k, v in (env["versions"] or {}).items())]
    out += ["", "## Data provenance and protocol", ""]
    for d in data_provenance(infos):
        note = f" **Protocol:** {d['protocol_note']}" if d.get("protocol_note") else ""
        cut = ", ".join(f"{k} {d[k]}" for k in ("max_train_samples", "max_eval_samples") if d.get(k))
        out.append(f"- {d['task']}: source `{d.get('source')}` (`{d.get('root')}`), train `{d.get('train')}`, "
                   f"val `{d.get('val')}`, test {d.get('test')}{'; cut: ' + cut if cut else ''}.{note}")
    notes = {t.note for t in tables if t.note}
    out += [f"- {n}" for n in sorted(notes)]
    failures = [(t.task, f) for t in tables for f in t.failures]
    if failures:
        out += ["", "## Failed jobs", ""] + [f"- {task}: {f}" for task, f in failures]
    return "\n".join(out) + "\n"
