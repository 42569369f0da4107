"""Shared fixtures: compose the real Hydra config (as the CLI would) and shrink it for CPU."""

from __future__ import annotations

import os

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra

from qbert.config import CONF_DIR, register_configs

os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
register_configs()

# The smallest real run: a random tiny BERT, a few batches of the committed sample.
FAST = ["model=tiny", "trainer=debug", "data.source=sample", "data.max_train_samples=64",
        "data.max_eval_samples=48", "optim.batch_size=8", "optim.eval_batch_size=16"]


def compose_config(overrides: list[str], output_dir=None):
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        extra = [f"output_dir={output_dir}"] if output_dir is not None else ["output_dir=."]
        return compose(config_name="train", overrides=[*overrides, *extra])


@pytest.fixture
def compose_cfg():
    return compose_config
