"""Fixtures of the export tests: a tiny Q8BERT-quantized BERT and its packed file."""

from __future__ import annotations

import pytest
import torch

from export_testing import quantized_tiny
from qbert.export import export_packed


@pytest.fixture
def q8_model() -> torch.nn.Module:
    return quantized_tiny("q8bert")


@pytest.fixture
def q8_file(q8_model, tmp_path):
    return export_packed(q8_model, tmp_path / "q8.qbert.safetensors")
