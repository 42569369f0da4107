"""Progress of a training run as log lines, for runs without a progress bar (background sweeps
whose output goes to a file, where a bar's carriage returns would fill it)."""

from __future__ import annotations

import logging
import time

import lightning as L
from lightning.pytorch.callbacks import Callback

log = logging.getLogger(__name__)


def _minutes(seconds: float) -> str:
    return f"{seconds / 60:.1f} min"


class LogProgress(Callback):
    """A line every ``every_seconds`` of training, and one when training ends: step of the total,
    epoch, the last batch's loss, time so far and the time left at the pace so far."""

    def __init__(self, every_seconds: float):
        self.every_seconds = every_seconds
        self.started = self.last = 0.0
        self.first_step = 0

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.started = self.last = time.monotonic()
        self.first_step = trainer.global_step  # a resumed run's pace counts only its own steps

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs, batch, batch_idx: int) -> None:
        now = time.monotonic()
        if now - self.last < self.every_seconds:
            return
        self.last = now
        log.info(self.line(trainer, outputs, now))

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        steps = trainer.global_step - self.first_step
        log.info("training done: %d optimiser steps in %s", steps, _minutes(time.monotonic() - self.started))

    def line(self, trainer: L.Trainer, outputs, now: float) -> str:
        step, total = trainer.global_step, trainer.estimated_stepping_batches
        elapsed = now - self.started
        done = step - self.first_step
        text = f"train step {step}/{total:.0f}" if total != float("inf") else f"train step {step}"
        if total not in (0, float("inf")):
            text += f" ({100 * step / total:.0f}%)"
        text += f", epoch {trainer.current_epoch + 1}"
        if trainer.max_steps == -1:  # else the step count, not the epochs, ends training
            text += f"/{trainer.max_epochs}"
        loss = outputs.get("loss") if isinstance(outputs, dict) else outputs
        if loss is not None:
            text += f", loss {float(loss):.4f}"
        text += f", {_minutes(elapsed)} so far"
        if done > 0 and total != float("inf"):
            text += f", about {_minutes(elapsed / done * max(total - step, 0))} left"
        return text
