"""Results files: the config hash that finds a run again, and atomic JSON reading/writing.

No torch here: reports read results without the training stack (the environment a run records
is gathered by ``qbert.environment``)."""

from __future__ import annotations

import functools
import hashlib
import json
from pathlib import Path
from typing import Any, Mapping

import yaml

from qbert.config import hash_neutral_values

# Keys that change where or how loudly a run happens, not what it computes: top-level keys, and
# keys inside a section.
NON_SEMANTIC_KEYS = ("output_dir", "logger", "experiment_name", "sweep", "finetuned_dir")
NON_SEMANTIC_SECTION_KEYS = {"trainer": ("enable_progress_bar", "progress_log_seconds", "log_every_n_steps",
                                         "save_checkpoints", "validate"),
                             "hessian": ("cache_dir",), "data": ("cache_dir",)}


def semantic_config(config: dict, ignore: tuple[str, ...] = (),
                    ignore_in_sections: Mapping[str, tuple[str, ...]] | None = None) -> dict:
    """What of a config determines the result: output paths and logging left out, and ``ignore``
    (top-level keys) and ``ignore_in_sections`` (keys inside a section) as well.

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
    return semantic


def config_hash(config: dict, ignore: tuple[str, ...] = (),
                ignore_in_sections: Mapping[str, tuple[str, ...]] | None = None) -> str:
    """A short hash of ``semantic_config`` (e.g. without the seed, to identify a row across seeds)."""
    blob = json.dumps(semantic_config(config, ignore, ignore_in_sections), sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:12]


@functools.cache
def _neutral_values() -> tuple[tuple[str, object], ...]:
    return tuple(hash_neutral_values().items())


def read_json(path: Path) -> dict | None:
    """A JSON object's content, or None when the file is missing, half-written, broken, not UTF-8
    or holds something other than an object (a list, a number): results, job and error files are
    objects, and a damaged one must be skipped, never crash whoever scans a folder of them."""
    try:
        content = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None
    return content if isinstance(content, dict) else None


def read_yaml(path: Path) -> Any:
    """A YAML file's content (Hydra's config, overrides, multirun files), or None when it is
    missing, not UTF-8 or not YAML: reports skip such a file rather than stop."""
    try:
        return yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError):
        return None


def write_results(path: Path, results: dict) -> Path:
    """Write atomically: a half-written file must never look like a finished run."""
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(results, indent=2, sort_keys=False, default=str) + "\n")
    tmp.replace(path)
    return path
