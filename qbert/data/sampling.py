"""Batch orders that waste no compute on padding.

Each batch is padded to its longest window. Random batches of real SST-2 sentences (13 tokens on
average) are padded to ~41 tokens, so most of a training step multiplies padding. Two orders fix
that without changing what is trained on:

* ``LengthGroupedSampler`` (training): every window once per epoch, batches of similar length,
  the batches in shuffled order. Windows are permuted, cut into mega-batches of
  ``mega_batches x batch_size``, each sorted by length (Hugging Face's
  ``get_length_grouped_indices``, the maintained recipe of its ``Trainer(group_by_length=True)``),
  cut into batches, and the batches shuffled (Hugging Face keeps them in descending length
  inside each mega-batch). The batch holding the longest window comes first, so memory runs out
  at the first step if it runs out at all; the one short batch comes last, so every other
  ``batch_size`` slice of the order is a whole batch. Deterministic per (seed, epoch).
* ``length_sorted_order`` (evaluation): longest first. Predictions are collected by
  ``feature_index``, so the order does not change any metric.
"""

from __future__ import annotations

from typing import Iterator, Sequence

import torch
from torch.utils.data import Sampler
from transformers.trainer_pt_utils import get_length_grouped_indices

MEGA_BATCHES = 50  # batches per sorted mega-batch (Hugging Face's default)


def window_lengths(windows: Sequence[dict]) -> list[int]:
    return [len(w["input_ids"]) for w in windows]


class LengthGroupedSampler(Sampler[int]):
    """Indices whose consecutive ``batch_size`` slices are batches of similar length."""

    def __init__(self, lengths: Sequence[int], batch_size: int, seed: int, mega_batches: int = MEGA_BATCHES) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if not lengths:
            raise ValueError("no training windows to sample from")
        self.lengths, self.batch_size, self.seed = list(lengths), batch_size, seed
        self.mega_batches = mega_batches
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Lightning calls this before each epoch; a wrapper that does not is covered by
        ``__iter__`` moving to the next epoch itself."""
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.lengths)

    def order(self, epoch: int) -> list[int]:
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
        # At least 4 mega-batches on a small set, as Hugging Face does, so the order stays random.
        mult = max(1, min(len(self.lengths) // (self.batch_size * 4), self.mega_batches))
        grouped = get_length_grouped_indices(self.lengths, self.batch_size, mult, generator=generator)
        batches = [grouped[i:i + self.batch_size] for i in range(0, len(grouped), self.batch_size)]
        short = batches.pop() if len(batches[-1]) < self.batch_size else None
        first = max(range(len(batches)), key=lambda b: max(self.lengths[i] for i in batches[b])) if batches else 0
        rest = [b for b in range(len(batches)) if b != first]
        shuffled = [rest[k] for k in torch.randperm(len(rest), generator=generator).tolist()]
        ordered = ([batches[first]] if batches else []) + [batches[b] for b in shuffled]
        if short is not None:
            ordered.append(short)
        return [i for batch in ordered for i in batch]

    def __iter__(self) -> Iterator[int]:
        order = self.order(self.epoch)
        self.epoch += 1
        return iter(order)


class FixedOrderSampler(Sampler[int]):
    def __init__(self, order: Sequence[int]) -> None:
        self.indices = list(order)

    def __len__(self) -> int:
        return len(self.indices)

    def __iter__(self) -> Iterator[int]:
        return iter(self.indices)


def length_sorted_order(lengths: Sequence[int]) -> list[int]:
    """Longest first; ties keep their file order."""
    return sorted(range(len(lengths)), key=lambda i: -lengths[i])
