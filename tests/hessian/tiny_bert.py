"""Tiny BERTs in float64 with eager attention: small enough to form a layer's Hessian explicitly.

(A module of its own, not a conftest: tests/, tests/quant/ and this folder each have helpers.)"""

from __future__ import annotations

import torch
from transformers import (BertConfig, BertForQuestionAnswering, BertForSequenceClassification,
                          BertForTokenClassification)

HEADS = {"classification": BertForSequenceClassification, "token_classification": BertForTokenClassification,
         "question_answering": BertForQuestionAnswering}


def tiny_model(kind: str = "classification", seed: int = 0, layers: int = 2) -> torch.nn.Module:
    torch.manual_seed(seed)
    config = BertConfig(vocab_size=40, hidden_size=8, num_hidden_layers=layers, num_attention_heads=2,
                        intermediate_size=12, max_position_embeddings=16, num_labels=2 if kind == "question_answering" else 3,
                        hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    model = HEADS[kind](config)
    model.set_attn_implementation("eager")
    # Larger weights than BERT's 0.02 init: a curved loss with a clear top eigenvalue.
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.ndim == 2:
                p.normal_(0.0, 0.5)
    return model.double().eval()


def tiny_batch(kind: str = "classification", seed: int = 1, size: int = 6, length: int = 7) -> dict:
    g = torch.Generator().manual_seed(seed)
    batch = {"input_ids": torch.randint(1, 40, (size, length), generator=g),
             "attention_mask": torch.ones(size, length, dtype=torch.long)}
    batch["attention_mask"][0, -2:] = 0  # some padding
    if kind == "classification":
        batch["labels"] = torch.randint(0, 3, (size,), generator=g)
    elif kind == "token_classification":
        batch["labels"] = torch.randint(0, 3, (size, length), generator=g)
    else:
        batch["start_positions"] = torch.randint(0, length, (size,), generator=g)
        batch["end_positions"] = torch.randint(0, length, (size,), generator=g)
    batch["feature_index"] = torch.arange(size)  # bookkeeping key the loss must ignore
    return batch
