"""One run, top to bottom: config -> data -> model -> (precision plan -> quantize) -> train ->
evaluate -> record. Everything a run produces lands in its output folder."""

from __future__ import annotations

import functools
import json
import logging
import time
from pathlib import Path

import lightning as L
from filelock import FileLock
import torch
from omegaconf import DictConfig, OmegaConf

from qbert.config import DistillConfig, HessianConfig, QuantConfig, RunConfig, validate
from qbert.data.features import model_inputs
from qbert.data.module import TaskDataModule
from qbert.data.sources import LABEL_NAMES, data_provenance
from qbert.hessian.mixed_precision import hessian_allocation
from qbert.precision import describe as describe_precision
from qbert.models import build_task_model, build_tokenizer, load_finetuned_, resolve_weights
from qbert.quant import (calibration, learned_quantizers, needs_calibration, quantization_map, quantize_,
                         size_from_model)
from qbert.methods import plan_for
from qbert.train.distill import Distiller, load_teacher, needs_eager
from qbert.environment import run_environment
from qbert.hf import mark_quantized
from qbert.report.record import config_hash, write_results
from qbert.sweep.jobs import checkpoint_readable
from qbert.train.module import TaskModule
from qbert.train.trainer import build_loggers, build_trainer

log = logging.getLogger(__name__)
# Lightning prints through a handler of its own; under Hydra the root logger already prints and
# files every record, so without this each Lightning line would appear twice.
for name in ("lightning", "lightning.pytorch"):
    logging.getLogger(name).handlers.clear()


def run(cfg: DictConfig, resume_from: str | None = None) -> dict:
    """One job. ``resume_from``: a Lightning checkpoint of this very config (an interrupted job)
    to continue training from."""
    run_cfg: RunConfig = validate(cfg)  # every range check, once
    config = OmegaConf.to_container(cfg, resolve=True)
    run_dir = Path(run_cfg.output_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    L.seed_everything(run_cfg.seed, workers=True, verbose=False)
    if run_cfg.trainer.accelerator != "cpu":
        torch.set_float32_matmul_precision("high")  # TF32 for what bf16 autocast leaves in fp32
    _log_once(describe_precision(run_cfg.trainer.precision, run_cfg.trainer.accelerator))
    started = time.perf_counter()

    # data
    tokenizer = build_tokenizer(run_cfg.model)
    datamodule = TaskDataModule(run_cfg.task, run_cfg.data, run_cfg.optim, tokenizer, run_cfg.seed)

    # model (a fine-tuned start point, if given; quantized runs have one unless quant.start=pretrained)
    model = build_task_model(run_cfg.model, run_cfg.task, vocab_size=len(tokenizer))
    init_from = run_cfg.init_from
    if init_from is None and run_cfg.quant.method != "none" and run_cfg.quant.start == "finetuned":
        init_from = finetuned_start(cfg)
    if init_from:
        load_finetuned_(model, init_from)
        # Training the start in this process moved the global RNG: reseed, so the stage below
        # draws the same dropout masks whether its start was trained now or found on disk.
        L.seed_everything(run_cfg.seed, workers=True, verbose=False)

    # precision plan (mixed precision: per-layer widths from the Hessian analysis) -> quantize
    # (fake quantization; QAT fine-tunes it below)
    mixed_precision = None
    if run_cfg.quant.method == "qbert_mp":
        mixed_precision = hessian_allocation(model, datamodule, run_cfg, run_dir / "hessian")
    plan = plan_for(run_cfg.quant, model.config.num_attention_heads,
                    mixed_precision["bits"] if mixed_precision else None)
    if plan is not None:
        quantize_(model, plan)
        # Activation ranges from real data: post-training quantization (not the dynamic kind),
        # and the initial values of learned scales before QAT.
        if (run_cfg.eval_only and needs_calibration(model)) or learned_quantizers(model):
            calibrate_(model, datamodule, run_cfg.quant.calibration_batches)

    # the teacher (knowledge distillation): the full-precision start, unless distill.teacher
    distiller, teacher_from = None, None
    if run_cfg.distill.enabled:
        teacher_from = run_cfg.distill.teacher or init_from or finetuned_start(cfg)  # from pre-trained: still the FP start
        teacher = load_teacher(teacher_from, run_cfg.model, run_cfg.task, len(tokenizer))
        if needs_eager(run_cfg.distill):  # attention maps: SDPA returns none
            teacher.set_attn_implementation("eager")
            model.set_attn_implementation("eager")
        distiller = Distiller(teacher, run_cfg.distill, token_level=run_cfg.task.kind == "token_classification")

    # train
    module = TaskModule(model, run_cfg.task, run_cfg.optim, datamodule, LABEL_NAMES[run_cfg.task.name],
                        distiller=distiller, quant_delay_steps=run_cfg.quant.delay_steps,
                        scale_lr=run_cfg.quant.scale_lr)
    run_name = run_dir.name
    loggers = build_loggers(run_cfg, run_dir, run_name, config, quantization_map(model))
    trainer, checkpoint = build_trainer(run_cfg, run_dir, loggers)
    try:
        fit_seconds = 0.0
        if not run_cfg.eval_only:
            # from_pretrained returns eval mode and Lightning keeps each module's mode: without
            # this, fine-tuning would silently run with dropout off.
            module.train()
            fit_started = time.perf_counter()
            trainer.fit(module, datamodule=datamodule, ckpt_path=resume_from)
            fit_seconds = time.perf_counter() - fit_started
            if run_cfg.trainer.eval_checkpoint == "best" and checkpoint and checkpoint.best_model_path:
                state = torch.load(checkpoint.best_model_path, map_location="cpu", weights_only=True)
                module.load_state_dict(state["state_dict"])

        # evaluate
        test_started = time.perf_counter()
        trainer.test(module, datamodule=datamodule, verbose=False)
        test_seconds = time.perf_counter() - test_started

        # record
        if trainer.is_global_zero:
            save_model(model, tokenizer, run_dir / "model")
        results = _results(run_cfg, config, module, datamodule, fit_seconds, test_seconds,
                           time.perf_counter() - started, init_from, teacher_from, mixed_precision)
        results["resumed_from"] = resume_from
        if trainer.is_global_zero:
            write_results(run_dir / "results.json", results)
            _log_summary(loggers, results)
            log.info("%s %s: %s", run_cfg.task.name, results["primary_metric_name"], results["primary_metric"])
            print(_headline(results))
        return results
    finally:
        for logger in loggers:
            if hasattr(logger, "experiment") and logger.__class__.__name__ == "WandbLogger":
                import wandb
                wandb.finish()  # one W&B run per job, also when a job fails


FP_START_IGNORED = ("quant", "hessian", "distill", "eval_only", "init_from")


@functools.cache
def _log_once(message: str) -> None:
    log.info(message)


def finetuned_start(cfg: DictConfig) -> str:
    """The full-precision fine-tuned run a quantized run starts from: reused when its folder
    already holds results, else produced now by the same pipeline with quant=none."""
    fp_cfg = cfg.copy()
    fp_cfg.quant = OmegaConf.structured(QuantConfig())
    fp_cfg.hessian = OmegaConf.structured(HessianConfig())  # analysis settings do not change the start
    fp_cfg.distill = OmegaConf.structured(DistillConfig())  # nor does the QAT stage's teacher
    fp_cfg.eval_only = False
    fp_cfg.output_dir = "."  # excluded from the hash, replaced below
    # Keyed without the sections a full-precision run never reads, so that a change to the
    # quantization, Hessian or distillation schema never orphans a trained start.
    key = config_hash(OmegaConf.to_container(fp_cfg, resolve=True), FP_START_IGNORED)
    folder = Path(cfg.finetuned_dir) / f"{cfg.task.name}_{cfg.model.name}_{key}"
    folder.parent.mkdir(parents=True, exist_ok=True)
    # Jobs of a parallel sweep wait for the one that trains the start instead of training it twice.
    with FileLock(folder.parent / f".{folder.name}.lock"):
        if (folder / "results.json").is_file():
            log.info("reusing the full-precision fine-tuned model in %s", folder)
            return str(folder)
        fp_cfg.output_dir = str(folder)
        last = folder / "checkpoints" / "last.ckpt"  # an interrupted start goes on from its last epoch
        resume = last.is_file() and checkpoint_readable(last)
        if resume:
            log.info("the full-precision start in %s was interrupted: resuming from %s", folder, last)
        elif last.is_file():
            log.warning("%s: not a readable checkpoint (truncated or damaged); the full-precision start in %s "
                        "starts over", last, folder)
        else:
            log.info("no full-precision fine-tuned model yet: training one in %s", folder)
        run(fp_cfg, resume_from=str(last) if resume else None)
    return str(folder)


def calibrate_(model: torch.nn.Module, datamodule: TaskDataModule, batches: int) -> None:
    """Observe activation ranges on the first training batches, in eval mode (no dropout)."""
    datamodule.setup("fit")
    with calibration(model.eval()), torch.no_grad():
        for _, batch in zip(range(batches), datamodule.train_dataloader()):
            model(**model_inputs(batch))


def save_model(model, tokenizer, folder: Path) -> None:
    """Weights (safetensors), tokenizer and, for a quantized model, the plan that rebuilds it:
    in quantization_map.json and in config.json's quantization_config, so that
    ``AutoModelFor...from_pretrained(folder)`` after ``import qbert`` rebuilds it (``qbert.hf``)."""
    qmap = quantization_map(model)
    if qmap:
        mark_quantized(model, qmap)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    if qmap:
        (folder / "quantization_map.json").write_text(json.dumps(qmap, indent=2) + "\n")


def _results(run_cfg: RunConfig, config: dict, module: TaskModule, datamodule: TaskDataModule,
             fit_seconds: float, test_seconds: float, wall_seconds: float, init_from: str | None,
             teacher_from: str | None = None, mixed_precision: dict | None = None) -> dict:
    model = module.model
    n_params = sum(p.numel() for p in model.parameters())
    size_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    qmap = quantization_map(model)
    primary_split = datamodule.splits.test[-1]
    metrics = module.test_metrics
    primary = metrics.get(primary_split, {}).get(run_cfg.task.metric)
    if not isinstance(primary, (int, float)) or primary != primary:
        # a job without its primary metric must fail, never be found later as finished
        raise RuntimeError(f"no {primary_split}/{run_cfg.task.metric} after testing (got {primary!r}; "
                           f"metrics: {metrics}): nothing was scored on split {primary_split!r}")
    return {
        "task": run_cfg.task.name,
        "model": run_cfg.model.name,
        "method": run_cfg.quant.method,
        "experiment": run_cfg.experiment_name,
        "seed": run_cfg.seed,
        "config_hash": config_hash(config),
        "primary_metric_name": f"{primary_split}/{run_cfg.task.metric}",
        "primary_metric": primary,
        "metrics": metrics,
        "val_metrics": module.val_metrics,
        "data": data_provenance(run_cfg.task, run_cfg.data),
        "weights": {"source": resolve_weights(run_cfg.model), "init_from": init_from},
        "distill": {"teacher": teacher_from} if teacher_from else None,
        "num_parameters": n_params,
        "model_size_mb": size_bytes / 2**20,  # MiB, as the papers' "MB": the float tensors in memory
        "quantization_map": qmap,
        "size": size_from_model(model).to_dict(),  # the accounted size of the quantized model
        "mixed_precision": mixed_precision,  # qbert_mp: sensitivity table, widths, timing, figures
        "timing_seconds": {"fit": fit_seconds, "test": test_seconds, "wall": wall_seconds},
        "steps": int(module.trainer.global_step),
        **run_environment(run_cfg.trainer.accelerator, run_cfg.trainer.precision),
        "config": config,
    }


def _log_summary(loggers, results: dict) -> None:
    for logger in loggers:
        if logger.__class__.__name__ == "WandbLogger":
            summary = logger.experiment.summary
            for split, metrics in results["metrics"].items():
                for name, value in metrics.items():
                    summary[f"final/{split}/{name}"] = value
            summary["config_hash"] = results["config_hash"]
            summary["model_size_mb"] = results["model_size_mb"]
            summary["size_wo_e_mib"] = results["size"]["encoder"]["mib"]
            # the job's row of the paper table, as a W&B Table (the sweep's report run has them all)
            import wandb

            from qbert.report.rows import from_results
            row = from_results(results).to_dict()
            columns = ["task", "method", "w_bits", "e_bits", "a_bits", "groups", "metric", "value",
                       "size_wo_e_mib", "seed", "config_hash"]
            logger.experiment.log({"results": wandb.Table(columns=columns, data=[[row[c] for c in columns]])})


def _headline(results: dict) -> str:
    metric = results["primary_metric"]
    shown = f"{metric:.2f}" if isinstance(metric, float) else "n/a"
    note = results["data"]["protocol_note"]
    return (f"[qbert] {results['task']} / {results['model']} / {results['method']}: "
            f"{results['primary_metric_name']} = {shown}  "
            f"(wall {results['timing_seconds']['wall']:.0f} s, results: {results['config']['output_dir']}/results.json)"
            + (f"\n[qbert] note: {note}" if note else ""))
