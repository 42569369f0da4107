"""Where a task's split comes from: the committed sample, a local folder, or the hub.

Local folders use the layout of ``../shared/data`` (see its README); every file may be plain or
gzip-compressed. The committed sample (``qbert/data/sample``) has the same layout.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Callable

from qbert.config import DataConfig, SplitsConfig, TaskConfig
from qbert.data import readers

SAMPLE_ROOT = Path(__file__).parent / "sample"

# task -> split -> file inside the data folder
LOCAL_FILES: dict[str, dict[str, str]] = {
    "sst2": {"train": "sst2/train.tsv", "dev": "sst2/dev.tsv"},
    "mnli": {"dev_matched": "mnli/dev_matched.tsv", "dev_mismatched": "mnli/dev_mismatched.tsv"},
    "conll03": {"train": "conll2003/train.txt", "valid": "conll2003/valid.txt",
                "test": "conll2003/test.txt"},
    "squad": {"train": "squad/train-v1.1.json", "dev": "squad/dev-v1.1.json"},
}

READERS: dict[str, Callable[[Path], list]] = {
    "sst2": lambda path: readers.read_glue_tsv(path, ["sentence"], "label", readers.SST2_LABELS),
    "mnli": lambda path: readers.read_glue_tsv(path, ["premise", "hypothesis"], "label",
                                               readers.MNLI_LABELS),
    "conll03": lambda path: readers.read_conll(path, readers.CONLL_TAGS),
    "squad": readers.read_squad,
}

LABEL_NAMES: dict[str, tuple[str, ...]] = {
    "sst2": ("negative", "positive"),
    "mnli": readers.MNLI_LABELS,
    "conll03": readers.CONLL_TAGS,
    "squad": (),
}


def check_num_labels(task: TaskConfig) -> None:
    """The head's width must be the data's label count: a wider head trains and scores silently
    wrong (an SST-2 run with 5 labels scored 0.00)."""
    names = LABEL_NAMES.get(task.name)
    expected = len(names) if names else (2 if task.kind == "question_answering" else None)
    if expected is not None and task.num_labels != expected:
        raise ValueError(f"config key 'task.num_labels': {task.num_labels} does not match the {expected} "
                         f"labels of {task.name} ({', '.join(names) if names else 'answer start and end'}); "
                         f"set task.num_labels={expected}")


HOLDOUT = "holdout"  # the split data.holdout takes out of the training split
HOLDOUT_DRAW_SEED = 0  # one draw for every run seed, so rows and seeds are scored on the same examples


def splits_of(task: TaskConfig, data: DataConfig) -> SplitsConfig:
    splits = task.hub_splits if data.source == "hub" else task.local_splits
    if data.holdout:  # the task's own val/test are not read at all
        return SplitsConfig(train=splits.train, val=HOLDOUT, test=[HOLDOUT])
    return splits


def stored_split(task: TaskConfig, data: DataConfig, split: str) -> str:
    """The split whose file (or hub split) holds ``split``'s examples: the training split for ``holdout``."""
    return splits_of(task, data).train if split == HOLDOUT else split


def holdout_indices(total: int, size: int, split: str) -> set[int]:
    """Which examples of the training split are held out: a fixed random draw of ``size``."""
    if size >= total:
        raise ValueError(f"config key 'data.holdout': {size} held-out examples leave none of the {total} "
                         f"of the training split {split!r} to train on; take fewer")
    return set(random.Random(HOLDOUT_DRAW_SEED).sample(range(total), size))


def _split_holdout(task: TaskConfig, data: DataConfig, split: str, examples: list) -> list:
    """The held-out part (split == HOLDOUT) or the rest (the training split), in file order."""
    held = holdout_indices(len(examples), data.holdout, splits_of(task, data).train)
    keep = split == HOLDOUT
    return [e for i, e in enumerate(examples) if (i in held) == keep]


def local_file(root: Path, task: str, split: str) -> Path:
    """The file of a split under ``root``: ``name.gz`` or plain ``name``, whichever exists."""
    try:
        relative = LOCAL_FILES[task][split]
    except KeyError:
        known = sorted(LOCAL_FILES.get(task, {}))
        raise ValueError(f"task {task!r} has no local split {split!r} (known: {known})") from None
    for candidate in (root / f"{relative}.gz", root / relative):
        if candidate.is_file():
            return candidate
    raise FileNotFoundError(f"no file for {task}/{split}: expected {root / relative}.gz or "
                            f"{root / relative} (data.root={root})")


def load_split(task: TaskConfig, data: DataConfig, split: str) -> list:
    """The examples of one split, cut to the configured maximum (first N, file order). With
    ``data.holdout`` the training split loses the held-out examples, which form split ``holdout``."""
    if task.name not in READERS:
        raise ValueError(f"config key 'task.name': no reader for {task.name!r} "
                         f"(known: {sorted(READERS)})")
    check_num_labels(task)
    source_split = stored_split(task, data, split)
    if data.source == "hub":
        from qbert.data.hub import load_hub_split
        examples = load_hub_split(task.name, source_split)
    else:
        examples = READERS[task.name](split_file(task, data, split))
    if not examples:  # header only, or SQuAD's "data": []: nothing to train on or to score
        where = split_file(task, data, split) if data.source != "hub" else f"hub split {task.name}/{source_split}"
        raise ValueError(f"{where}: no examples in split {source_split!r} of {task.name} "
                         "(an empty or header-only file?)")
    if data.holdout and source_split == splits_of(task, data).train:
        examples = _split_holdout(task, data, split, examples)
    limit = split_limit(task, data, split)
    return examples[:limit] if limit else examples


def split_file(task: TaskConfig, data: DataConfig, split: str) -> Path | None:
    """The local file a split is read from (None for the hub)."""
    if data.source == "hub":
        return None
    root = SAMPLE_ROOT if data.source == "sample" else Path(data.root).expanduser()
    return local_file(root, task.name, stored_split(task, data, split))


def split_limit(task: TaskConfig, data: DataConfig, split: str) -> int | None:
    """How many examples of the split are kept (the first N, file order); None = all."""
    is_train = split == splits_of(task, data).train
    return data.max_train_samples if is_train else data.max_eval_samples


def data_provenance(task: TaskConfig, data: DataConfig) -> dict:
    """What results.json records about the data: source, folder, splits, protocol."""
    splits = splits_of(task, data)
    root = {"sample": str(SAMPLE_ROOT), "local": data.root, "hub": None}[data.source]
    note = task.local_protocol_note if data.source != "hub" else ""
    if data.holdout:
        note = (f"recipe selection: trained on the training split less {data.holdout} examples held out of it "
                f"(one fixed draw), validated and scored on those; the task's own val/test splits are not read"
                + (f". {note}" if note else ""))
    found = {"source": data.source, "root": root, "train": splits.train, "val": splits.val,
             "test": list(splits.test), "protocol_note": note,
             "max_train_samples": data.max_train_samples, "max_eval_samples": data.max_eval_samples}
    if data.holdout:  # absent otherwise, so earlier records and reports stay as they were
        found["holdout"] = data.holdout
    return found
