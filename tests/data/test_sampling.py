"""Length-grouped training order and length-sorted evaluation order."""

from __future__ import annotations

import random

import pytest

from qbert.data.sampling import LengthGroupedSampler, length_sorted_order


def _lengths(n: int, seed: int = 0) -> list[int]:
    rng = random.Random(seed)
    return [rng.randint(3, 60) for _ in range(n)]


@pytest.mark.parametrize("n,batch", [(1000, 32), (1001, 32), (31, 32), (64, 8), (5, 1)])
def test_every_window_exactly_once_per_epoch(n, batch):
    sampler = LengthGroupedSampler(_lengths(n), batch, seed=3)
    for epoch in range(3):
        sampler.set_epoch(epoch)
        order = list(sampler)
        assert sorted(order) == list(range(n)), f"epoch {epoch}"


def test_deterministic_per_seed_and_epoch():
    lengths = _lengths(2000)
    a, b = LengthGroupedSampler(lengths, 32, seed=1), LengthGroupedSampler(lengths, 32, seed=1)
    assert a.order(0) == b.order(0)
    assert a.order(1) != a.order(0)  # a new order every epoch
    assert LengthGroupedSampler(lengths, 32, seed=2).order(0) != a.order(0)
    # set_epoch chooses the epoch; without it each pass moves on by itself
    a.set_epoch(1)
    assert list(a) == b.order(1)
    assert list(a) == b.order(2)


def test_batches_are_grouped_by_length_and_shuffled():
    lengths = _lengths(6400, seed=5)
    order = LengthGroupedSampler(lengths, 32, seed=0).order(0)
    batches = [order[i:i + 32] for i in range(0, len(order), 32)]
    padded = sum(max(lengths[i] for i in b) * len(b) for b in batches)
    random_padded = sum(max(lengths[i] for i in b) * len(b) for b in
                        [list(range(i, min(i + 32, 6400))) for i in range(0, 6400, 32)])
    assert padded < 0.7 * random_padded  # far less padding than random batches
    # the batch with the longest window comes first; the rest are not sorted by length
    assert max(lengths) in [lengths[i] for i in batches[0]]
    longest = [max(lengths[i] for i in b) for b in batches[1:]]
    assert longest != sorted(longest) and longest != sorted(longest, reverse=True)


def test_the_short_batch_comes_last():
    lengths = _lengths(1000)
    order = LengthGroupedSampler(lengths, 32, seed=0).order(0)
    assert len(order) % 32 == 1000 % 32 == 8
    # every full slice of 32 is one of the grouped batches: its lengths lie close together
    spans = [max(lengths[i] for i in order[k:k + 32]) - min(lengths[i] for i in order[k:k + 32])
             for k in range(0, 992, 32)]
    assert sum(spans) / len(spans) < 10


def test_eval_order_is_longest_first_and_complete():
    lengths = [5, 9, 9, 2, 30]
    assert length_sorted_order(lengths) == [4, 1, 2, 0, 3]


def test_empty_training_set_is_refused():
    with pytest.raises(ValueError, match="no training windows"):
        LengthGroupedSampler([], 32, seed=0)
