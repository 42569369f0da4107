"""Shared fixtures: compose the real Hydra config (as the CLI would) and shrink it for CPU."""

from __future__ import annotations

import os

import pytest

from qbert.config import register_configs
from qbert_testing import compose_config

os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
register_configs()


@pytest.fixture
def compose_cfg():
    return compose_config
