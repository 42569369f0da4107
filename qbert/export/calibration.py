"""Calibration batches for an export step that needs data: the first N training examples of the
task a run was trained on, read from the data its ``results.json`` names, tokenized with the
tokenizer saved beside its model."""

from __future__ import annotations

import json
from pathlib import Path

from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException
from torch import Tensor

from qbert.config import DataConfig, TaskConfig
from qbert.data.features import build_features, model_inputs
from qbert.data.module import PadCollator
from qbert.data.sources import load_split, splits_of

BATCH = 32


def run_calibration(folder: str | Path, count: int, data_root: str | None = None) -> tuple[list[dict[str, Tensor]], str]:
    """``(batches, description)``: the first ``count`` training windows of the task of the run in
    ``folder`` (the run folder, holding ``results.json`` and ``model/``) as model inputs (no labels),
    in batches of ``BATCH`` padded to their longest window. ``data_root`` replaces the data folder
    the run recorded (the data moved, or another machine)."""
    from transformers import AutoTokenizer

    if count < 1:
        raise ValueError(f"calibration needs at least one example, not {count}")
    folder = Path(folder)
    results = folder / "results.json"
    if not results.is_file():
        raise FileNotFoundError(f"{results}: missing; calibration reads the run's task and data from it")
    config = json.loads(results.read_text()).get("config") or {}
    if "task" not in config or "data" not in config:
        raise ValueError(f"{results}: its 'config' has no task or data section to find the training data in")
    try:  # a key this version does not know, or a value out of range: named with the file
        task = OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(TaskConfig), config["task"]))
        data = OmegaConf.merge(OmegaConf.structured(DataConfig), config["data"])
        if data_root is not None:
            data.root = str(data_root)
        data = OmegaConf.to_object(data)
    except (OmegaConfBaseException, ValueError) as error:
        raise ValueError(f"{results}: its task or data settings: {error}".splitlines()[0]) from None
    split = splits_of(task, data).train
    examples = load_split(task, data, split)[:count]
    tokenizer = AutoTokenizer.from_pretrained(folder / "model")
    windows = build_features(task.kind, examples, tokenizer, task, train=False).inputs[:count]
    collate = PadCollator(tokenizer.pad_token_id)
    batches = []
    for start in range(0, len(windows), BATCH):
        batch = model_inputs(collate([{k: v for k, v in w.items() if k != "labels"} for w in windows[start:start + BATCH]]))
        batches.append(batch)
    where = data.root if data.source == "local" else data.source
    return batches, f"the first {len(windows)} windows of {task.name}/{split} ({where})"
