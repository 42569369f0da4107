"""Write one run's ``results.json``: everything needed to find, compare and re-run it."""

from __future__ import annotations

import hashlib
import json
import platform
import subprocess
from importlib import metadata
from pathlib import Path

import torch

PACKAGES = ("qbert", "torch", "transformers", "tokenizers", "lightning", "hydra-core", "omegaconf",
            "datasets", "torchmetrics", "seqeval", "wandb")
# Keys that change where or how loudly a run happens, not what it computes.
NON_SEMANTIC_KEYS = ("output_dir", "logger", "experiment_name", "sweep", "finetuned_dir")
NON_SEMANTIC_TRAINER_KEYS = ("enable_progress_bar", "log_every_n_steps", "save_checkpoints")


def config_hash(config: dict) -> str:
    """A short hash of what determines the result (output paths and logging excluded)."""
    semantic = {k: v for k, v in config.items() if k not in NON_SEMANTIC_KEYS}
    if isinstance(semantic.get("trainer"), dict):
        semantic["trainer"] = {k: v for k, v in semantic["trainer"].items()
                               if k not in NON_SEMANTIC_TRAINER_KEYS}
    if isinstance(semantic.get("hessian"), dict):  # where the analysis is cached, not what it is
        semantic["hessian"] = {k: v for k, v in semantic["hessian"].items() if k != "cache_dir"}
    blob = json.dumps(semantic, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:12]


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
