"""Training progress as log lines, for background runs without a progress bar."""

from __future__ import annotations

import logging

import pytest

from qbert.config import TrainerConfig
from qbert.pipeline import run
from qbert_testing import FAST, compose_config


def test_progress_lines_name_the_step_loss_and_time_left(tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="qbert.train.progress")
    run(compose_config(["task=sst2", *FAST, "trainer.progress_log_seconds=1e-9"], output_dir=tmp_path))
    lines = [r.getMessage() for r in caplog.records if r.name == "qbert.train.progress"]
    assert any(line.startswith("train step 3/3 (100%), epoch 1, loss ") and "left" in line for line in lines), lines
    assert lines[-1].startswith("training done: 3 optimiser steps in ")


def test_when_progress_lines_come():
    """Every 60 s when there is no bar (background runs), none beside a bar, or as set."""
    assert TrainerConfig(enable_progress_bar=True).progress_seconds() == 0
    assert TrainerConfig(enable_progress_bar=False).progress_seconds() == 60
    assert TrainerConfig(enable_progress_bar=True, progress_log_seconds=30).progress_seconds() == 30
    assert TrainerConfig(enable_progress_bar=False, progress_log_seconds=0).progress_seconds() == 0
    with pytest.raises(ValueError, match="trainer.progress_log_seconds"):
        TrainerConfig(progress_log_seconds=-1)
