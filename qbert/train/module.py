"""One LightningModule for every task: loss from the Hugging Face head, metrics from qbert.eval.

The module owns a (possibly quantized) task model. Validation and test collect each window's
prediction by its ``feature_index`` and decode them into the task metric at the end of the epoch.

Quantization-aware extras: a ``Distiller`` (``qbert.train.distill``) adds the distillation terms
to the task loss; ``quant_delay_steps`` keeps fake quantization off for the first QAT steps
(Q8BERT's delay; evaluation is always quantized); learned quantization scales get their own
parameter group, without weight decay and at ``scale_lr``.
"""

from __future__ import annotations

import re

import lightning as L
import torch
from transformers import get_linear_schedule_with_warmup

from qbert.config import OptimConfig, TaskConfig
from qbert.data.features import model_inputs
from qbert.eval.decode import decode
from qbert.quant import quantization_map, set_fake_quant_

SCALE_PARAMS = ("weight_quantizer.scale", "input_quantizer.scale", "input_quantizer.offset")
# the learned steps/offsets of quantized attention matmuls (qbert.quant.attention)
OPERAND_PARAMS = re.compile(r".*\.operand_quantizers\.\w+\.(?:scale|offset)")


def param_groups(model: torch.nn.Module, weight_decay: float, lr: float, scale_lr: float | None = None) -> list[dict]:
    """AdamW groups: weight decay on matrices only (not biases and LayerNorm weights, as in
    BERT's recipe); learned quantization steps/offsets in a group of their own, without weight
    decay (it would shrink the steps) and at ``scale_lr`` (default: ``lr``)."""
    decay, no_decay, scales = [], [], []
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        if name.endswith(SCALE_PARAMS) or OPERAND_PARAMS.fullmatch(name):
            scales.append(param)
        else:
            (no_decay if param.ndim < 2 else decay).append(param)
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    if scales:
        groups.append({"params": scales, "weight_decay": 0.0, "lr": scale_lr or lr})
    return groups


class TaskModule(L.LightningModule):
    def __init__(self, model: torch.nn.Module, task: TaskConfig, optim: OptimConfig,
                 datamodule, label_names: tuple[str, ...], *, distiller=None,
                 quant_delay_steps: int = 0, scale_lr: float | None = None) -> None:
        super().__init__()
        self.model, self.task, self.optim = model, task, optim
        self.distiller, self.quant_delay_steps, self.scale_lr = distiller, quant_delay_steps, scale_lr
        self.datamodule, self.label_names = datamodule, label_names
        self._collected: dict[int, dict] = {}
        self.test_metrics: dict[str, dict[str, float]] = {}
        self.val_metrics: dict[str, float] = {}

    def forward(self, batch: dict[str, torch.Tensor]):
        return self.model(**model_inputs(batch))

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        size = batch["input_ids"].shape[0]
        if self.distiller is None:
            loss = self(batch).loss
        else:
            inputs = model_inputs(batch)
            output = self.model(**inputs, **self.distiller.model_kwargs())
            terms = self.distiller(output, inputs)
            loss = self.distiller.cfg.labels_weight * output.loss + terms["kd"]
            for name in ("logits", "hidden", "attention"):
                self.log(f"train/kd_{name}", terms[name], batch_size=size)
        self.log("train/loss", loss, prog_bar=True, batch_size=size)
        return loss

    # --- quantization-aware extras ------------------------------------------------------------
    def on_fit_start(self) -> None:
        if self.distiller is not None:
            self.distiller.to(self.device)

    def on_train_batch_start(self, batch, batch_idx: int) -> None:
        if self.quant_delay_steps:
            set_fake_quant_(self.model, self.global_step >= self.quant_delay_steps)

    def on_validation_start(self) -> None:
        set_fake_quant_(self.model, True)  # evaluation is always quantized

    def on_test_start(self) -> None:
        set_fake_quant_(self.model, True)

    # --- evaluation: collect per-window predictions, decode at epoch end ----------------------
    def _collect(self, batch: dict[str, torch.Tensor], dataloader_idx: int) -> None:
        output = self(batch)
        store = self._collected.setdefault(dataloader_idx, {})
        indices = batch["feature_index"].tolist()
        if self.task.kind == "question_answering":
            starts = output.start_logits.float().cpu().numpy()
            ends = output.end_logits.float().cpu().numpy()
            for row, index in enumerate(indices):
                length = int(batch["attention_mask"][row].sum())
                store[index] = (starts[row, :length], ends[row, :length])
        else:
            preds = output.logits.argmax(-1).cpu()
            for row, index in enumerate(indices):
                if self.task.kind == "token_classification":
                    length = int(batch["attention_mask"][row].sum())
                    store[index] = preds[row, :length].tolist()
                else:
                    store[index] = int(preds[row])
        if output.loss is not None:
            key = f"test/{self.datamodule.splits.test[dataloader_idx]}/loss" if self.trainer.testing else "val/loss"
            self.log(key, output.loss, batch_size=len(indices), add_dataloader_idx=False, sync_dist=True)

    def validation_step(self, batch, batch_idx: int) -> None:
        self._collect(batch, 0)

    def test_step(self, batch, batch_idx: int, dataloader_idx: int = 0) -> None:
        self._collect(batch, dataloader_idx)

    def on_validation_epoch_end(self) -> None:
        predictions = self._collected.pop(0, {})
        self._collected.clear()
        if self.trainer.sanity_checking:
            return
        split = self.datamodule.splits.val
        metrics = decode(self.task, self.datamodule.eval_sets[split], predictions, self.label_names)
        self.val_metrics = metrics
        for name, value in metrics.items():
            self.log(f"val/{name}", value, prog_bar=name == self.task.metric)

    def on_test_epoch_end(self) -> None:
        for idx, split in enumerate(self.datamodule.splits.test):
            predictions = self._collected.get(idx, {})
            metrics = decode(self.task, self.datamodule.eval_sets[split], predictions, self.label_names)
            self.test_metrics[split] = metrics
            for name, value in metrics.items():
                self.log(f"test/{split}/{name}", value, add_dataloader_idx=False)
        self._collected.clear()

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        # The plan travels with the weights, so a checkpoint can be rebuilt on its own.
        checkpoint["quantization_map"] = quantization_map(self.model)

    # --- optimisation -------------------------------------------------------------------------
    def configure_gradient_clipping(self, optimizer, gradient_clip_val=None, gradient_clip_algorithm=None) -> None:
        """Clip by global norm over the optimiser's parameters, as Lightning does, but also for a
        fused AdamW under bf16 autocast (Lightning refuses any fused optimiser with AMP because of
        fp16 loss scaling; bf16 has none, and config validation refuses fused + fp16)."""
        if gradient_clip_val:
            params = [p for group in optimizer.param_groups for p in group["params"]]
            torch.nn.utils.clip_grad_norm_(params, gradient_clip_val)

    def configure_optimizers(self):
        groups = param_groups(self.model, self.optim.weight_decay, self.optim.lr, self.scale_lr)
        optimizer = torch.optim.AdamW(groups, lr=self.optim.lr, fused=self.optim.fused or None)
        total = int(self.trainer.estimated_stepping_batches)
        scheduler = get_linear_schedule_with_warmup(optimizer, int(self.optim.warmup_ratio * total), total)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}
