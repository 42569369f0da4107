"""Training speed on real data: the old loop, each change alone, all together, and HF's Trainer.

Every variant is the real training loop (qbert's LightningModule and Trainer, or Hugging Face's
``Trainer`` for the reference) training MiniLM-L6 + classifier, batch 32, on the same real SST-2
sentences. The sentences (the first --rounds x --sentences of the training file) are cut into
--rounds disjoint slices; in each round every variant trains one epoch over that round's slice,
variant after variant, so a drift in the machine's speed (this CPU's varies by up to 30% over
minutes) hits every variant alike. A callback times each optimiser step (forward, backward,
clipping, AdamW, logging) and counts the real (unpadded) and padded tokens of its batch; the
first step of each epoch is left out. Speeds are totals over all measured steps of all rounds.

Changes measured (one at a time on top of the old loop, then all together):
  group  - length-grouped batches (data.group_by_length)
  bf16   - bf16 autocast (trainer.precision=bf16-mixed); on a CPU without native bf16 it is
           emulated and far slower, so it runs one round of --slow-sentences there
  fused  - one fused AdamW kernel (optim.fused)
  kernels- qbert's fake-quantization kernels (QAT only); "old" = PyTorch's fused
           fake_quantize_per_*_affine kernels and aminmax ranges, as qbert used before
"new defaults" is what a run picks on this machine (precision from qbert.precision).

    python experiments/bench_train.py --data ../shared/data --out experiments/results/bench_train_cpu.json
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import platform
import sys
import tempfile
import time
import warnings
from pathlib import Path

import lightning as L
import torch

from qbert.config import register_configs, validate
from qbert.data.features import Features
from qbert.data.module import TaskDataModule
from qbert.models import build_task_model, build_tokenizer
from qbert.precision import cpu_precision, native_bf16_features
from qbert.quant import primitives, quantize_
from qbert.methods import plan_for
from qbert.train.module import TaskModule
from qbert.train.trainer import build_trainer

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from qbert_testing import compose_config  # noqa: E402  (the real config, composed as the CLI does)

OLD = {"group": False, "bf16": False, "fused": False, "kernels": "old"}
QAT = {"qbert_w2_g128": ["quant=qbert", "quant.w_bits=2", "quant.groups=128"],
       "qbert_mp_2_3": ["quant=qbert_mp", "quant.allocation=manual", "quant.layer_bits=[3,3,3,2,2,2]"]}


# --- the old fake-quantization kernels, as qbert had them before this change ----------------------
def _old_fake_quantize(x, scale, zero_point, bits, symmetric):
    if primitives.check_bits(bits) == primitives.FLOAT_BITS:
        return x
    qmin, qmax = primitives.qrange(bits, symmetric)
    scale, zero_point = scale.detach().float(), zero_point.detach().to(torch.int32)
    if scale.numel() == 1:
        out = torch.fake_quantize_per_tensor_affine(x.float(), scale.reshape(()), zero_point.reshape(()), qmin, qmax)
    elif scale.shape == (x.shape[0],) + (1,) * (x.ndim - 1):
        out = torch.fake_quantize_per_channel_affine(x.float(), scale.reshape(-1), zero_point.reshape(-1), 0, qmin, qmax)
    else:  # per-row ranges of looked-up embedding rows: the generic path (then as now)
        return _new_fq(x, scale, zero_point, bits, symmetric)
    return out.to(x.dtype)


def _old_range(x, method="minmax", percentile=99.99, dim=None):
    if method != "minmax" or dim is None:
        return _new_range(x, method, percentile, dim)
    x = x.detach()
    dims = primitives._reduce_dims(x.ndim, dim)
    keep = [1 if d in dims else s for d, s in enumerate(x.shape)]
    kept = [d for d in range(x.ndim) if d not in dims]
    flat = x.permute(*kept, *dims).reshape(*[x.shape[d] for d in kept], -1)
    lo, hi = torch.aminmax(flat, dim=-1)
    return lo.reshape(keep), hi.reshape(keep)


_new_fq, _new_range = primitives.fake_quantize, primitives.range_from_tensor


@contextlib.contextmanager
def kernels(which: str):
    import qbert.quant.granularity as granularity
    import qbert.quant.modules as modules
    import qbert.quant.quantizers as quantizers
    fq, rng = (_old_fake_quantize, _old_range) if which == "old" else (_new_fq, _new_range)
    targets = [(primitives, "fake_quantize", fq), (modules, "fake_quantize", fq), (quantizers, "fake_quantize", fq),
               (primitives, "range_from_tensor", rng), (quantizers, "range_from_tensor", rng),
               (granularity, "range_from_tensor", rng)]
    saved = [(m, n, getattr(m, n)) for m, n, _ in targets]
    for m, n, f in targets:
        setattr(m, n, f)
    try:
        yield
    finally:
        for m, n, f in saved:
            setattr(m, n, f)


# --- timing -----------------------------------------------------------------------------------------
class StepTimer:
    """Step times and token counts; ``round_start`` marks where an epoch's warm-up step is."""

    def __init__(self) -> None:
        self.seconds, self.real, self.padded = [], [], []
        self.warm: list[int] = []  # indices of left-out steps
        self._t = 0.0

    def round_start(self) -> None:
        self.warm.append(len(self.seconds))

    def count(self, batch) -> None:
        self.real.append(int(batch["attention_mask"].sum()))
        self.padded.append(int(batch["attention_mask"].numel()))

    def start(self) -> None:
        self._t = time.perf_counter()

    def stop(self) -> None:
        self.seconds.append(time.perf_counter() - self._t)

    def summary(self) -> dict:
        keep = [i for i in range(len(self.seconds)) if i not in set(self.warm)]
        s = [self.seconds[i] for i in keep]
        real, padded = [self.real[i] for i in keep], [self.padded[i] for i in keep]
        total = sum(s)
        if not s:
            raise ValueError("no step left to measure after the warm-up step of each epoch: give more sentences")
        return {"steps": len(s), "steps_per_s": len(s) / total, "real_tokens_per_s": sum(real) / total,
                "mean_step_ms": 1000 * total / len(s), "mean_real_tokens": sum(real) / len(s),
                "mean_padded_tokens": sum(padded) / len(s), "seconds": total}


class _LightningTimer(L.Callback):
    def __init__(self, timer: StepTimer) -> None:
        self.timer = timer

    def on_train_batch_start(self, trainer, module, batch, batch_idx) -> None:
        self.timer.count(batch)
        self.timer.start()

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx) -> None:
        self.timer.stop()


def _slice(datamodule, window_slice: tuple[int, int]) -> None:
    datamodule.setup("fit")
    datamodule.train_features = Features(inputs=datamodule.train_features.inputs[slice(*window_slice)])


def qbert_loop(data_root: str, quant: list[str], change: dict, window_slice: tuple[int, int], seed: int,
               timer: StepTimer) -> None:
    overrides = ["task=sst2", "data.source=local", f"data.root={data_root}", f"seed={seed}",
                 "optim.epochs=1", *(["quant.epochs=1"] if quant else []),
                 f"data.group_by_length={change['group']}", f"optim.fused={change['fused']}",
                 f"trainer.precision={'bf16-mixed' if change['bf16'] else '32-true'}",
                 "trainer.validate=never", "trainer.save_checkpoints=false",
                 "trainer.enable_progress_bar=false", "logger=none", *quant]
    with tempfile.TemporaryDirectory() as out:
        run = validate(compose_config(overrides, output_dir=out))
        L.seed_everything(seed, verbose=False)
        tokenizer = build_tokenizer(run.model)
        datamodule = TaskDataModule(run.task, run.data, run.optim, tokenizer, run.seed)
        _slice(datamodule, window_slice)
        model = build_task_model(run.model, run.task, vocab_size=len(tokenizer))
        bits = run.quant.layer_bits if run.quant.method == "qbert_mp" else None
        plan = plan_for(run.quant, model.config.num_attention_heads, bits)
        if plan is not None:
            quantize_(model, plan)
        module = TaskModule(model, run.task, run.optim, datamodule, ("negative", "positive"))
        trainer, _ = build_trainer(run, Path(out), [])
        trainer.callbacks.append(_LightningTimer(timer))
        module.train()
        timer.round_start()
        with kernels(change.get("kernels", "new")):
            trainer.fit(module, datamodule=datamodule)


def hf_trainer(data_root: str, window_slice: tuple[int, int], seed: int, bf16: bool, timer: StepTimer) -> str:
    """Hugging Face's Trainer on the same model, data and batch size: what a user would pick.
    Returns the optimizer it chose."""
    from transformers import DataCollatorWithPadding, Trainer, TrainerCallback, TrainingArguments

    run = validate(compose_config(["task=sst2", "data.source=local", f"data.root={data_root}"]))
    tokenizer = build_tokenizer(run.model)
    datamodule = TaskDataModule(run.task, run.data, run.optim, tokenizer, seed)
    _slice(datamodule, window_slice)
    dataset = [{k: v for k, v in w.items() if k != "feature_index"} for w in datamodule.train_features.inputs]
    model = build_task_model(run.model, run.task, vocab_size=len(tokenizer)).train()

    class Timer(TrainerCallback):
        def on_step_begin(self, args, state, control, **kw):
            timer.start()

        def on_step_end(self, args, state, control, **kw):
            timer.stop()

    collate = DataCollatorWithPadding(tokenizer)

    def collator(features):  # one batch per step (no accumulation): counted in order
        batch = collate(features)
        timer.count(batch)
        return batch

    with tempfile.TemporaryDirectory() as out:
        args = TrainingArguments(output_dir=out, per_device_train_batch_size=run.optim.batch_size,
                                 learning_rate=run.optim.lr, num_train_epochs=1, train_sampling_strategy="group_by_length",
                                 bf16=bf16, use_cpu=True, save_strategy="no", logging_strategy="no",
                                 report_to=[], seed=seed, dataloader_num_workers=0, disable_tqdm=True)
        timer.round_start()
        Trainer(model=model, args=args, train_dataset=dataset, data_collator=collator,
                callbacks=[Timer()]).train()
    # the collator may have run a batch ahead of the last step
    del timer.real[len(timer.seconds):], timer.padded[len(timer.seconds):]
    return args.optim if isinstance(args.optim, str) else str(args.optim.value)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", required=True, help="folder in the layout of ../shared/data")
    parser.add_argument("--rounds", type=int, default=4, help="rounds: every variant trains once per round")
    parser.add_argument("--sentences", type=int, default=800, help="training sentences per round (an epoch)")
    parser.add_argument("--slow-sentences", type=int, default=160,
                        help="sentences of the one round of bf16 variants on a CPU that emulates bf16")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--out", type=Path, default=Path("experiments/results/bench_train_cpu.json"))
    args = parser.parse_args()
    register_configs()
    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore")
    native = bool(native_bf16_features())
    defaults = {"group": True, "bf16": cpu_precision() == "bf16-mixed", "fused": True, "kernels": "new"}

    variants = [("fp", "old loop", [], OLD)]
    variants += [("fp", f"+{c}", [], {**OLD, c: True}) for c in ("group", "bf16", "fused")]
    variants += [("fp", "new defaults", [], defaults)]
    if not defaults["bf16"]:
        variants += [("fp", "new defaults + bf16", [], {**defaults, "bf16": True})]
    for name, quant in QAT.items():
        variants += [(name, "old loop", quant, OLD)]
        variants += [(name, f"+{c}", quant, {**OLD, c: True}) for c in ("group", "bf16", "fused")]
        variants += [(name, "+kernels", quant, {**OLD, "kernels": "new"})]
        variants += [(name, "new defaults", quant, defaults)]
    hf = [("hf_trainer", "group_by_length, bf16", True), ("hf_trainer", "group_by_length, fp32", False)]

    timers: dict[tuple[str, str], StepTimer] = {}
    optimizer = None
    slow = [v for v in variants if v[3]["bf16"] and not native] + [h for h in hf if h[2] and not native]
    for r in range(args.rounds):
        window = (r * args.sentences, (r + 1) * args.sentences)
        for kind, label, quant, change in variants:
            if (kind, label, quant, change) in slow:
                continue
            print(f"[bench_train] round {r + 1}/{args.rounds} {kind:14s} {label}", flush=True)
            qbert_loop(args.data, quant, change, window, args.seed, timers.setdefault((kind, label), StepTimer()))
        for kind, label, bf16 in hf:
            if (kind, label, bf16) in slow:
                continue
            print(f"[bench_train] round {r + 1}/{args.rounds} {kind:14s} {label}", flush=True)
            optimizer = hf_trainer(args.data, window, args.seed, bf16, timers.setdefault((kind, label), StepTimer()))
    for item in slow:  # emulated bf16: one short round
        kind, label = item[0], item[1]
        print(f"[bench_train] bf16 emulated, one round of {args.slow_sentences} sentences: {kind} {label}", flush=True)
        timer = timers.setdefault((kind, label), StepTimer())
        if kind == "hf_trainer":
            hf_trainer(args.data, (0, args.slow_sentences), args.seed, True, timer)
        else:
            qbert_loop(args.data, item[2], item[3], (0, args.slow_sentences), args.seed, timer)

    results: dict = {"fp": {}, **{name: {} for name in QAT}, "hf_trainer": {}}
    changes = {(k, label): change for k, label, _, change in variants}
    for (kind, label), timer in timers.items():
        results[kind][label] = {**timer.summary(), "change": changes.get((kind, label))}
        r = results[kind][label]
        print(f"{kind:14s} {label:22s} {r['steps_per_s']:.2f} steps/s, {r['real_tokens_per_s']:.0f} real tokens/s "
              f"({r['mean_padded_tokens']:.0f} padded / {r['mean_real_tokens']:.0f} real tokens a batch, {r['steps']} steps)")
    results["hf_trainer_optimizer"] = optimizer

    # Ratios of real (unpadded) tokens per second: every variant trains on the same sentences, so
    # this is the ratio of epoch times, without the warm-up steps (which differ between orders).
    speed = "real_tokens_per_s"
    fp_old, fp_new = results["fp"]["old loop"], results["fp"]["new defaults"]
    hf_best = max((r for r in results["hf_trainer"].values()), key=lambda r: r[speed])
    ratios = {"measure": speed, "fp_new_over_old": fp_new[speed] / fp_old[speed],
              "fp_new_over_hf_best": fp_new[speed] / hf_best[speed]}
    for name in QAT:
        qat = results[name]["new defaults"]
        ratios[f"{name}_step_over_fp_step"] = fp_new[speed] / qat[speed]
        ratios[f"{name}_new_over_old"] = qat[speed] / results[name]["old loop"][speed]
        ratios[f"{name}_new_over_hf_best"] = qat[speed] / hf_best[speed]
    for kind in ("fp", *QAT):
        base = results[kind]["old loop"][speed]
        ratios[f"{kind}_each_change_over_old"] = {label: r[speed] / base for label, r in results[kind].items()}
    out = {
        "what": "MiniLM-L6 + classifier, batch 32, trained on the same real SST-2 sentences by every variant, "
                "in interleaved rounds (one epoch over each round's slice); each optimiser step timed by a callback; "
                "totals over the measured steps (the first step of each epoch left out)",
        "machine": {"platform": platform.platform(), "processor": platform.processor() or platform.machine(),
                    "torch_threads": torch.get_num_threads(), "native_bf16": list(native_bf16_features()),
                    "cpu_capability": torch.backends.cpu.get_cpu_capability(), "torch": torch.__version__},
        "settings": vars(args) | {"out": str(args.out)},
        "new_defaults": defaults,
        "results": results,
        "ratios": ratios,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=1, default=str) + "\n")
    print(json.dumps(ratios, indent=1))


if __name__ == "__main__":
    main()
