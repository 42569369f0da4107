"""The LightningDataModule of a task: read splits, tokenize once, batch with dynamic padding."""

from __future__ import annotations

from dataclasses import dataclass

import lightning as L
import torch
from torch.utils.data import DataLoader
from transformers import PreTrainedTokenizerBase

from qbert.config import DataConfig, OptimConfig, TaskConfig
from qbert.data.features import IGNORE_INDEX, Features, build_features
from qbert.data.sources import load_split, splits_of


@dataclass
class EvalSet:
    """One evaluation split: the examples and their windows, kept for decoding predictions."""

    name: str
    examples: list
    features: Features


class PadCollator:
    """Pads each batch to its longest window (not to max_length): far less work on short data."""

    def __init__(self, pad_token_id: int) -> None:
        self.pad = {"input_ids": pad_token_id, "attention_mask": 0, "token_type_ids": 0,
                    "labels": IGNORE_INDEX}

    def __call__(self, windows: list[dict]) -> dict[str, torch.Tensor]:
        longest = max(len(w["input_ids"]) for w in windows)
        batch = {}
        for key in windows[0]:
            values = [w[key] for w in windows]
            if isinstance(values[0], list):
                values = [v + [self.pad[key]] * (longest - len(v)) for v in values]
            batch[key] = torch.tensor(values, dtype=torch.long)
        return batch


class TaskDataModule(L.LightningDataModule):
    def __init__(self, task: TaskConfig, data: DataConfig, optim: OptimConfig,
                 tokenizer: PreTrainedTokenizerBase, seed: int) -> None:
        super().__init__()
        self.task, self.data, self.optim, self.tokenizer, self.seed = task, data, optim, tokenizer, seed
        self.splits = splits_of(task, data)
        self.collate = PadCollator(tokenizer.pad_token_id)
        self.train_features: Features | None = None
        self.eval_sets: dict[str, EvalSet] = {}

    def _eval_set(self, split: str) -> EvalSet:
        if split not in self.eval_sets:
            examples = load_split(self.task, self.data, split)
            features = build_features(self.task.kind, examples, self.tokenizer, self.task, train=False)
            self.eval_sets[split] = EvalSet(split, examples, features)
        return self.eval_sets[split]

    def setup(self, stage: str | None = None) -> None:
        if stage in (None, "fit") and self.train_features is None:
            examples = load_split(self.task, self.data, self.splits.train)
            self.train_features = build_features(self.task.kind, examples, self.tokenizer, self.task,
                                                 train=True)
        if stage in (None, "fit", "validate"):
            self._eval_set(self.splits.val)
        if stage in (None, "test"):
            for split in self.splits.test:
                self._eval_set(split)

    def _loader(self, windows: list[dict], shuffle: bool, batch_size: int) -> DataLoader:
        generator = torch.Generator().manual_seed(self.seed)  # same order for the same seed
        return DataLoader(windows, batch_size=batch_size, shuffle=shuffle, collate_fn=self.collate,
                          num_workers=self.data.num_workers, generator=generator)

    def train_dataloader(self) -> DataLoader:
        return self._loader(self.train_features.inputs, True, self.optim.batch_size)

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.eval_sets[self.splits.val].features.inputs, False,
                            self.optim.eval_batch_size)

    def test_dataloader(self) -> list[DataLoader]:
        return [self._loader(self.eval_sets[s].features.inputs, False, self.optim.eval_batch_size)
                for s in self.splits.test]
