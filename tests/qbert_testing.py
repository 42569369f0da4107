"""Helpers shared by the tests (a module of its own: both tests/ and tests/quant/ have a conftest)."""

from __future__ import annotations

import os
from pathlib import Path

from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra

from qbert.config import CONF_DIR

# The full real data (the layout of ../shared/data), beside the checkout unless QBERT_DATA_ROOT says
# otherwise; tests that need it skip where it is absent.
REAL_DATA = Path(os.environ.get("QBERT_DATA_ROOT", Path(__file__).resolve().parents[2] / "shared" / "data"))

# The smallest real run: a random tiny BERT, a few batches of the committed sample.
FAST = ["model=tiny", "trainer=debug", "data.source=sample", "data.max_train_samples=64",
        "data.max_eval_samples=48", "optim.batch_size=8", "optim.eval_batch_size=16"]


def compose_config(overrides: list[str], output_dir=None):
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        extra = [f"output_dir={output_dir}"] if output_dir is not None else ["output_dir=."]
        return compose(config_name="train", overrides=[*overrides, *extra])
