"""Write one run's ``results.json``: everything needed to find, compare and re-run it."""

from __future__ import annotations

import functools
import hashlib
import json
import platform
import subprocess
from importlib import metadata
from pathlib import Path
from typing import Mapping

import torch

from qbert.config import hash_neutral_values

PACKAGES = ("qbert", "torch", "transformers", "tokenizers", "lightning", "hydra-core", "omegaconf",
            "datasets", "torchmetrics", "seqeval", "wandb")
# Keys that change where or how loudly a run happens, not what it computes: top-level keys, and
# keys inside a section.
NON_SEMANTIC_KEYS = ("output_dir", "logger", "experiment_name", "sweep", "finetuned_dir")
NON_SEMANTIC_SECTION_KEYS = {"trainer": ("enable_progress_bar", "log_every_n_steps", "save_checkpoints", "validate"),
                             "hessian": ("cache_dir",), "data": ("cache_dir",)}


def config_hash(config: dict, ignore: tuple[str, ...] = (),
                ignore_in_sections: Mapping[str, tuple[str, ...]] | None = None) -> str:
    """A short hash of what determines the result (output paths and logging excluded); ``ignore``
    and ``ignore_in_sections`` leave out more keys (e.g. the seed, to identify a row across seeds).

    A field added to the schema after results existed is left out while it holds its neutral
    value (``qbert.config.added_field``): the hash of earlier work does not change when the
    schema grows, and changes as soon as the field does."""
    top = set(NON_SEMANTIC_KEYS) | set(ignore)
    semantic = {k: v for k, v in config.items() if k not in top}
    for section in set(NON_SEMANTIC_SECTION_KEYS) | set(ignore_in_sections or {}):
        if isinstance(semantic.get(section), dict):
            dropped = (*NON_SEMANTIC_SECTION_KEYS.get(section, ()), *(ignore_in_sections or {}).get(section, ()))
            semantic[section] = {k: v for k, v in semantic[section].items() if k not in dropped}
    for key, neutral in _neutral_values():
        section, _, name = key.rpartition(".")
        holder = semantic.get(section) if section else semantic
        if isinstance(holder, dict) and name in holder and holder[name] == neutral:
            holder = dict(holder)
            del holder[name]
            if section:
                semantic[section] = holder
            else:
                semantic = holder
    blob = json.dumps(semantic, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:12]


@functools.cache
def _neutral_values() -> tuple[tuple[str, object], ...]:
    return tuple(hash_neutral_values().items())


def read_json(path: Path) -> dict | None:
    """A JSON file's content, or None when it is missing, half-written or broken."""
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None


def git_state(cwd: Path | None = None) -> dict:
    def git(*args: str) -> str | None:
        try:
            return subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True,
                                  timeout=10, check=True).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            return None
    sha = git("rev-parse", "HEAD")
    if sha is None:  # not a git checkout (e.g. a copied working tree): unknown, not clean
        return {"sha": None, "dirty": None}
    status = git("status", "--porcelain", "--untracked-files=no")
    return {"sha": sha, "dirty": bool(status) if status is not None else None}


def versions() -> dict[str, str | None]:
    found = {}
    for name in PACKAGES:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            found[name] = None
    found["python"] = platform.python_version()
    return found


def device_info(accelerator: str) -> dict:
    info = {"accelerator": accelerator, "platform": platform.platform(),
            "processor": platform.processor() or platform.machine(),
            "torch_threads": torch.get_num_threads()}
    if torch.cuda.is_available() and accelerator in ("gpu", "cuda", "auto"):
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


def write_results(path: Path, results: dict) -> Path:
    """Write atomically: a half-written file must never look like a finished run."""
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(results, indent=2, sort_keys=False, default=str) + "\n")
    tmp.replace(path)
    return path
