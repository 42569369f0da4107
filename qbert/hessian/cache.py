"""Sensitivity results as JSON artifacts, keyed by what determines them.

The key hashes the analysed weights (their bytes, so any checkpoint format or location gives the
same key for the same model), the task and data settings and the analysis settings (fraction,
runs, batches, iterations, tolerance, trace probes, seed). A sweep's first job computes the
analysis; every later job with the same key loads it.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path
from typing import Any, Optional

import torch
from torch import nn

from qbert.hessian.sensitivity import Sensitivity

log = logging.getLogger(__name__)


def weights_hash(model: nn.Module) -> str:
    """sha256 of every parameter and buffer (name, dtype, shape, bytes), in state_dict order."""
    digest = hashlib.sha256()
    for name, tensor in model.state_dict().items():
        t = tensor.detach().cpu().contiguous()
        digest.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        digest.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return digest.hexdigest()


def cache_key(fields: dict[str, Any]) -> str:
    blob = json.dumps(fields, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def cache_path(cache_dir: str | Path, prefix: str, key: str) -> Path:
    return Path(cache_dir) / f"{prefix}_{key}.json"


def load(path: Path, expected_key: str) -> Optional[Sensitivity]:
    """The cached result at ``path``, or None when absent or damaged (a killed writer, a disk
    fault: recomputed, with a warning naming the file, instead of blocking every MP job of this
    key). A readable file whose recorded key differs (hand-edited or foreign) is an error, not
    silently reused."""
    if not path.is_file():
        return None
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
        recorded_key = record["settings"]["cache_key"]
        sensitivity = Sensitivity.from_dict(record) if recorded_key == expected_key else None
    except (UnicodeDecodeError, ValueError, KeyError, TypeError, AttributeError) as err:
        log.warning("%s: damaged Hessian cache (%s: %s); recomputing the analysis", path, type(err).__name__, err)
        return None
    if sensitivity is None:
        raise ValueError(f"{path}: holds a sensitivity analysis for key {recorded_key!r}, not "
                         f"{expected_key!r}; remove it")
    return sensitivity


def save(path: Path, sensitivity: Sensitivity) -> None:
    """Write atomically: parallel sweep jobs never read a half-written file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".{os.getpid()}.tmp")
    tmp.write_text(json.dumps(sensitivity.to_dict(), indent=1) + "\n")
    tmp.replace(path)
