"""Tiny quantized BERTs for the export tests (CPU, seeded, no network); a module of its own so
test files can import it (conftest holds the fixtures)."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from transformers import BertConfig, BertForSequenceClassification

from qbert.export import export_packed
from qbert.quant import (calibration, layerwise_plan, mkq_plan, q8bert_plan, qbert_plan, quantization_map, quantize_,
                         uniform_plan)
from qbert.quant.input_ranges import InputRanges

# in/out features multiples of 64 / 8, so the integer kernels (int8 _int_mm, int4 tinygemm) apply
TINY = dict(vocab_size=100, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
            intermediate_size=128, max_position_embeddings=64, num_labels=3)

PLANS = {
    "q8bert": lambda: q8bert_plan(),                                          # 8-bit, EMA inputs
    "q8bert_dynamic": lambda: q8bert_plan(dynamic=True),                      # per-batch inputs
    "qbert_mp_asym": lambda: layerwise_plan([3, 2], 8, 8, groups=8, symmetric=False),
    "qbert_w4": lambda: qbert_plan(4, 8, 8, groups=16),
    "mkq_w4a4": lambda: mkq_plan(4, 4, 8, groups=4),                          # learned (LSQ) scales
    # asymmetric EMA inputs with symmetric weights, per-token inputs, a site at its own width
    "qbert_input_sites": lambda: qbert_plan(4, 8, 8, groups=16, inputs=InputRanges(
        "ema_asym", {"ffn_in": "per_token", "ffn_out": "per_token_asym"}, {"attn_out": 6})),
    "qbert_groups_per_head": lambda: qbert_plan(4, 8, 8, groups=16, groups_per_head=2, num_heads=4),
    "w8a8_asym_inputs": lambda: uniform_plan(8, 8, 8, inputs=InputRanges("ema_asym")),  # per-tensor, int8-able
    # MKQ's true W4A4 (Q, K, V, P quantized, integer zero points), and its symmetric 8-bit form
    "mkq_w4a4_attention": lambda: mkq_plan(4, 4, 8, groups=4, attention_operands=True, integer_zero_points=True),
    "mkq_w8a8_attention_sym": lambda: mkq_plan(8, 8, 8, groups=4, a_symmetric=True, attention_operands=True,
                                               integer_zero_points=True),
}


def batch(seed: int = 1, size: int = 3, seq: int = 12) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, TINY["vocab_size"], (size, seq), generator=g)
    mask = torch.ones_like(ids)
    mask[0, seq // 2:] = 0
    return {"input_ids": ids, "attention_mask": mask}


def quantized_tiny(plan: str, seed: int = 0) -> torch.nn.Module:
    """A random tiny BERT after ``quantize_`` and a calibration pass (ranges observed)."""
    torch.manual_seed(seed)
    model = BertForSequenceClassification(BertConfig(**TINY)).eval()
    quantize_(model, PLANS[plan]())
    with calibration(model), torch.no_grad():
        model(**batch(seed=7, size=8))
    return model


def run_folder(path: Path, plan: str = "q8bert") -> Path:
    """A quantized run folder as ``pipeline.save_model`` writes it (``path/model/``): qbert-export's input."""
    model = quantized_tiny(plan)
    model.save_pretrained(path / "model")
    (path / "model" / "quantization_map.json").write_text(json.dumps(quantization_map(model)))
    return path


def sst2_tiny_packed(path: Path) -> Path:
    """A tiny BERT with the MiniLM tokenizer's vocabulary and 128 positions (the dev batches')."""
    torch.manual_seed(0)
    model = BertForSequenceClassification(BertConfig(**dict(TINY, vocab_size=30522, max_position_embeddings=128,
                                                            num_labels=2))).eval()
    quantize_(model, q8bert_plan())
    g = torch.Generator().manual_seed(7)
    with calibration(model), torch.no_grad():
        model(input_ids=torch.randint(1000, 30522, (8, 32), generator=g))
    return export_packed(model, path)
