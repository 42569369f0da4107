"""The LightningDataModule of a task: read splits, tokenize once (cached on disk), batch with
dynamic padding; training batches grouped by length, evaluation windows sorted by length."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import lightning as L
import torch
from torch.utils.data import DataLoader, RandomSampler
from transformers import PreTrainedTokenizerBase

from qbert.config import DataConfig, OptimConfig, TaskConfig
from qbert.data.cache import cached_features, features_key, file_digest, tokenizer_fingerprint
from qbert.data.features import IGNORE_INDEX, Features, build_features
from qbert.data.sampling import FixedOrderSampler, LengthGroupedSampler, length_sorted_order, window_lengths
from qbert.data.sources import HOLDOUT, load_split, split_file, split_limit, splits_of


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
        self._tokenizer_digest: str | None = None

    def _features(self, split: str, examples: list, train: bool) -> Features:
        """Tokenized windows of a split, from the on-disk cache when the same inputs made them."""
        def build() -> Features:
            return build_features(self.task.kind, examples, self.tokenizer, self.task, train=train)

        path = split_file(self.task, self.data, split)
        if path is None or self.data.cache_dir is None:  # the hub's data is not pinned to a file
            return build()
        if self._tokenizer_digest is None:
            self._tokenizer_digest = tokenizer_fingerprint(self.tokenizer)
        shape = {"name": self.task.name, "kind": self.task.kind, "max_length": self.task.max_length,
                 "doc_stride": self.task.doc_stride if self.task.kind == "question_answering" else None}
        if self.data.holdout:  # which part of the training file: the held-out examples or the rest
            shape["holdout"] = [self.data.holdout, split == HOLDOUT]
        key = features_key(shape, self._tokenizer_digest, file_digest(path),
                           split_limit(self.task, self.data, split), train)
        return cached_features(Path(self.data.cache_dir), key, f"{self.task.name}/{split}", build)

    def _eval_set(self, split: str) -> EvalSet:
        if split not in self.eval_sets:
            examples = load_split(self.task, self.data, split)
            self.eval_sets[split] = EvalSet(split, examples, self._features(split, examples, train=False))
        return self.eval_sets[split]

    def setup(self, stage: str | None = None) -> None:
        if stage in (None, "fit") and self.train_features is None:
            examples = load_split(self.task, self.data, self.splits.train)
            if not examples:
                raise ValueError(f"the training split {self.splits.train!r} of {self.task.name} holds no examples")
            self.train_features = self._features(self.splits.train, examples, train=True)
        if stage in (None, "fit", "validate"):
            self._eval_set(self.splits.val)
        if stage in (None, "test"):
            for split in self.splits.test:
                self._eval_set(split)

    def _loader(self, windows: list[dict], sampler, batch_size: int, generator: torch.Generator) -> DataLoader:
        # A generator of its own: creating the iterator then draws its seed from it, never from
        # the global RNG, so a validation pass cannot shift the dropout masks of training.
        return DataLoader(windows, batch_size=batch_size, sampler=sampler, collate_fn=self.collate,
                          num_workers=self.data.num_workers, generator=generator)

    def train_dataloader(self) -> DataLoader:
        windows = self.train_features.inputs
        generator = torch.Generator().manual_seed(self.seed)
        if self.data.group_by_length:
            sampler = LengthGroupedSampler(window_lengths(windows), self.optim.batch_size, self.seed)
        else:  # uniformly shuffled; the same order for the same seed
            sampler = RandomSampler(windows, generator=generator)
        return self._loader(windows, sampler, self.optim.batch_size, generator)

    def _eval_loader(self, split: str) -> DataLoader:
        windows = self.eval_sets[split].features.inputs
        order = FixedOrderSampler(length_sorted_order(window_lengths(windows)))
        return self._loader(windows, order, self.optim.eval_batch_size, torch.Generator().manual_seed(self.seed))

    def val_dataloader(self) -> DataLoader:
        return self._eval_loader(self.splits.val)

    def test_dataloader(self) -> list[DataLoader]:
        return [self._eval_loader(s) for s in self.splits.test]
