"""Tokenized features cached on disk, so the jobs of a sweep tokenize each split once.

A cache file is keyed by everything the features depend on: the task settings that shape the
windows, the tokenizer (its full serialisation, not its name), the data file's bytes, the cut
applied to the split, the train/eval flag, and the versions of the code that builds them. Change
any of these and the key changes, so a stale file is never read. Files are ``.npz`` arrays
(``allow_pickle=False``: nothing executable is loaded), written atomically; a damaged file is
reported, removed and rebuilt.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
import zipfile
from pathlib import Path
from typing import Callable

import numpy as np
import tokenizers
import transformers

from qbert.data.features import Features

log = logging.getLogger(__name__)

# Bump when qbert.data.features changes what it produces: older files then stop matching.
FEATURES_VERSION = 1
NONE = -1  # stands for None in word ids and offsets (both are >= 0 otherwise)


def file_digest(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def tokenizer_fingerprint(tokenizer) -> str:
    """A digest of what the tokenizer does: its whole serialisation when it is a fast tokenizer,
    else its vocabulary and settings."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        state = json.loads(backend.to_str())
        # Truncation and padding are left behind by the previous call; every call sets its own.
        state.pop("truncation", None)
        state.pop("padding", None)
        text = json.dumps(state, sort_keys=True)
    else:
        text = json.dumps([sorted(tokenizer.get_vocab().items()), str(tokenizer.init_kwargs)], default=str)
    return hashlib.sha256(f"{type(tokenizer).__name__}\n{text}".encode()).hexdigest()


def features_key(task_settings: dict, tokenizer_digest: str, data_digest: str, limit: int | None,
                 train: bool) -> str:
    blob = json.dumps({"task": task_settings, "tokenizer": tokenizer_digest, "data": data_digest,
                       "limit": limit, "train": train, "version": FEATURES_VERSION,
                       "transformers": transformers.__version__, "tokenizers": tokenizers.__version__},
                      sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:20]


def _ragged(rows: list[list], none=NONE) -> tuple[np.ndarray, np.ndarray]:
    lengths = np.fromiter((len(r) for r in rows), dtype=np.int64, count=len(rows))
    flat = [none if v is None else v for r in rows for v in r]
    return np.asarray(flat, dtype=np.int64), lengths


def _split(flat: np.ndarray, lengths: np.ndarray) -> list[list]:
    ends = np.cumsum(lengths)
    values = flat.tolist()
    return [values[end - n:end] for n, end in zip(lengths.tolist(), ends.tolist())]


def to_arrays(features: Features) -> dict[str, np.ndarray]:
    arrays: dict[str, np.ndarray] = {}
    keys = list(features.inputs[0]) if features.inputs else []
    for key in keys:
        column = [w[key] for w in features.inputs]
        if isinstance(column[0], list):
            arrays[f"inputs.{key}.flat"], arrays[f"inputs.{key}.lengths"] = _ragged(column)
        else:
            arrays[f"inputs.{key}"] = np.asarray(column, dtype=np.int64)
    if features.word_ids:
        arrays["word_ids.flat"], arrays["word_ids.lengths"] = _ragged(features.word_ids)
    if features.example_index:
        arrays["example_index"] = np.asarray(features.example_index, dtype=np.int64)
    if features.offsets:
        pairs = [[NONE if s is None else s[0] for s in row] for row in features.offsets]
        ends = [[NONE if s is None else s[1] for s in row] for row in features.offsets]
        arrays["offsets.start.flat"], arrays["offsets.lengths"] = _ragged(pairs)
        arrays["offsets.end.flat"], _ = _ragged(ends)
    arrays["count"] = np.asarray([len(features.inputs)], dtype=np.int64)
    return arrays


def from_arrays(arrays) -> Features:
    count = int(arrays["count"][0])
    columns: dict[str, list] = {}
    for name in arrays.files:
        if name.startswith("inputs.") and name.endswith(".flat"):
            key = name[len("inputs."):-len(".flat")]
            columns[key] = _split(arrays[name], arrays[f"inputs.{key}.lengths"])
        elif name.startswith("inputs.") and not name.endswith(".lengths"):
            columns[name[len("inputs."):]] = arrays[name].tolist()
    if any(len(c) != count for c in columns.values()):
        raise ValueError(f"columns of {sorted(columns)} do not all hold {count} windows")
    inputs = [dict(zip(columns, values)) for values in zip(*columns.values())] if columns else []
    features = Features(inputs=inputs)
    if "word_ids.flat" in arrays.files:
        features.word_ids = [[None if v == NONE else v for v in row]
                             for row in _split(arrays["word_ids.flat"], arrays["word_ids.lengths"])]
    if "example_index" in arrays.files:
        features.example_index = arrays["example_index"].tolist()
    if "offsets.start.flat" in arrays.files:
        starts = _split(arrays["offsets.start.flat"], arrays["offsets.lengths"])
        ends = _split(arrays["offsets.end.flat"], arrays["offsets.lengths"])
        features.offsets = [[None if s == NONE else (s, e) for s, e in zip(row_s, row_e)]
                            for row_s, row_e in zip(starts, ends)]
    return features


def cached_features(folder: Path | None, key: str, label: str, build: Callable[[], Features]) -> Features:
    """The features under ``key`` in ``folder``, built (and stored) when absent or damaged."""
    if folder is None:
        return build()
    path = Path(folder) / f"{key}.npz"
    if path.is_file():
        try:
            with np.load(path, allow_pickle=False) as arrays:
                features = from_arrays(arrays)
            log.info("%s: tokenized features from the cache %s", label, path)
            return features
        except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as error:
            log.warning("%s: cached features %s are damaged (%s: %s); rebuilding them",
                        label, path, type(error).__name__, error)
            path.unlink(missing_ok=True)
    features = build()
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, tmp = tempfile.mkstemp(dir=path.parent, suffix=".npz.tmp")
    try:
        with os.fdopen(handle, "wb") as out:
            np.savez(out, **to_arrays(features))
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    log.info("%s: tokenized features cached in %s", label, path)
    return features
