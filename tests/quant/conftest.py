"""Tiny random BERTs for the quantization tests (CPU, seeded, no network)."""

from __future__ import annotations

import pytest
import torch
from transformers import (
    BertConfig,
    BertForQuestionAnswering,
    BertForSequenceClassification,
    BertForTokenClassification,
)

TINY = dict(vocab_size=100, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
            intermediate_size=64, max_position_embeddings=64)


@pytest.fixture
def tiny_config() -> BertConfig:
    return BertConfig(**TINY)


def make_tiny(cls=BertForSequenceClassification, seed: int = 0, **overrides) -> torch.nn.Module:
    torch.manual_seed(seed)
    return cls(BertConfig(**{**TINY, **overrides})).eval()


@pytest.fixture
def tiny_seq_model() -> BertForSequenceClassification:
    return make_tiny(BertForSequenceClassification)


@pytest.fixture
def tiny_token_model() -> BertForTokenClassification:
    return make_tiny(BertForTokenClassification)


@pytest.fixture
def tiny_qa_model() -> BertForQuestionAnswering:
    return make_tiny(BertForQuestionAnswering)


@pytest.fixture
def tiny_batch() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(1, 100, (8, 12), generator=g)
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids),
            "labels": torch.randint(0, 2, (8,), generator=g)}


@pytest.fixture
def make_model():
    """Factory: ``make_model(cls=BertForSequenceClassification, seed=0, **config_overrides)``."""
    return make_tiny
