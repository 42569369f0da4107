"""What a run records about where it ran: the code's and the working directory's git state, the
installed versions, the device."""

from __future__ import annotations

import platform
import subprocess
from importlib import metadata
from pathlib import Path

import torch

PACKAGES = ("qbert", "torch", "transformers", "tokenizers", "lightning", "hydra-core", "omegaconf",
            "datasets", "seqeval", "wandb")
PACKAGE_DIR = Path(__file__).resolve().parent


def git_state(cwd: Path | None = None) -> dict:
    """sha and dirty flag of the git checkout at ``cwd`` (both None when it is not one)."""
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


def code_checkout() -> Path | None:
    """The source checkout qbert runs from (editable install or PYTHONPATH), None for a wheel."""
    root = PACKAGE_DIR.parent
    return root if (root / "pyproject.toml").is_file() and (root / ".git").exists() else None


def run_environment(accelerator: str, precision: str) -> dict:
    """The ``git`` (the code's checkout; None for an installed wheel, whose version is in
    ``versions``), ``cwd_git`` (the working directory, when it is a checkout), ``versions`` and
    ``device`` entries of results.json."""
    from qbert.precision import native_bf16_features

    checkout = code_checkout()
    cwd_state = git_state(Path.cwd())
    device = {**device_info(accelerator), "precision": precision}
    if accelerator == "cpu":
        device["native_bf16"] = list(native_bf16_features())
    return {"git": git_state(checkout) if checkout else {"sha": None, "dirty": None, "installed": True},
            "cwd_git": cwd_state if cwd_state["sha"] else None,
            "versions": versions(), "device": device}
