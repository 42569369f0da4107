"""Build the Lightning Trainer, its checkpoints and its loggers from typed configs."""

from __future__ import annotations

import netrc
import os
from pathlib import Path

import lightning as L
from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from lightning.pytorch.loggers import CSVLogger, Logger, WandbLogger

from qbert.config import RunConfig
from qbert.report.widths import widths_from_map
from qbert.train.progress import LogProgress


def wandb_mode(requested: str | None) -> str:
    """Online only when credentials exist; otherwise offline, to be synced later."""
    if requested:
        return requested
    if os.environ.get("WANDB_API_KEY"):
        return "online"
    try:
        if netrc.netrc().authenticators("api.wandb.ai"):
            return "online"
    except (FileNotFoundError, netrc.NetrcParseError):
        pass
    return "offline"


def run_tags(run: RunConfig, qmap: dict | None) -> list[str]:
    """What finds a job again in W&B: task, model, method, seed, and the widths of the plan the
    run applied (its quantization map)."""
    tags = [run.task.name, run.model.name, run.quant.method, f"seed{run.seed}"]
    if qmap:
        widths = widths_from_map(qmap)
        if widths.mixed:
            tags.append(f"mp{min(widths.layer_bits)}-{max(widths.layer_bits)}")
        else:
            tags.append(f"w{widths.mean_w_bits:g}")
        tags += [f"e{widths.e_bits}", f"a{widths.a_bits}"]
        if widths.groups is not None:
            tags.append(f"g{widths.groups}")
    return tags


def build_loggers(run: RunConfig, run_dir: Path, run_name: str, config: dict, qmap: dict | None = None) -> list[Logger]:
    if run.logger.name == "none":
        return []
    if run.logger.name == "csv":
        return [CSVLogger(save_dir=str(run_dir), name="csv", version="")]
    tags = list(run.logger.tags) or run_tags(run, qmap)
    return [WandbLogger(project=run.logger.project, group=run.logger.group or run.experiment_name,
                        name=run_name, tags=tags, mode=wandb_mode(run.logger.mode),
                        save_dir=str(run_dir), config=config)]


class SaveLastEachEpoch(Callback):
    """``checkpoints/last.ckpt`` after every training epoch, written atomically. Lightning's own
    ``save_last`` follows only a top-k save, so without a best checkpoint to keep and without
    validation (the defaults) it never wrote one, and a killed job restarted from scratch."""

    def __init__(self, path: Path):
        self.path = Path(path)

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        tmp = self.path.with_name(self.path.name + ".tmp")
        trainer.save_checkpoint(tmp)  # every rank takes part; rank zero writes
        if trainer.is_global_zero:
            os.replace(tmp, self.path)


def build_trainer(run: RunConfig, run_dir: Path, loggers: list[Logger]) -> tuple[L.Trainer, ModelCheckpoint | None]:
    t = run.trainer
    validates = t.validates(run.logger.name)
    checkpoint = None
    callbacks = []
    if t.save_checkpoints:
        # last.ckpt always (an interrupted job resumes from it); best.ckpt only when something selects it
        callbacks.append(SaveLastEachEpoch(run_dir / "checkpoints" / "last.ckpt"))
        if t.eval_checkpoint == "best":
            checkpoint = ModelCheckpoint(dirpath=str(run_dir / "checkpoints"), monitor=f"val/{run.task.metric}",
                                         mode="max", save_top_k=1, save_last=False, filename="best")
            callbacks.append(checkpoint)
    if t.progress_seconds() > 0:
        callbacks.append(LogProgress(t.progress_seconds()))
    trainer = L.Trainer(
        accelerator=t.accelerator, devices=t.devices, strategy=t.strategy, precision=t.precision,
        deterministic=t.deterministic, max_epochs=run.optim.epochs, max_steps=t.max_steps,
        limit_train_batches=t.limit_train_batches, limit_val_batches=t.limit_val_batches if validates else 0,
        limit_test_batches=t.limit_test_batches, val_check_interval=t.val_check_interval,
        log_every_n_steps=t.log_every_n_steps, enable_progress_bar=t.enable_progress_bar,
        gradient_clip_val=run.optim.grad_clip or None, logger=loggers or False,
        callbacks=callbacks, enable_checkpointing=checkpoint is not None, default_root_dir=str(run_dir),
        num_sanity_val_steps=0, enable_model_summary=False,
    )
    return trainer, checkpoint
