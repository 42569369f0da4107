"""SST-2 dev accuracy (all 872 sentences) of one quantized run three ways, on identical inputs:
the fake-quantized model (the run's ``model/``), the packed file's inference model
(``qbert.export.load_packed``) and, with ``--int8``, the CPU int8 path (torchao PT2E +
Inductor, QAT ranges, calibrated on SST-2 *training* sentences). Written as JSON.

    OMP_NUM_THREADS=1 taskset -c 1 python experiments/eval_packed.py outputs/q8bert_sst2 --int8 \
        --data /work/shared/data --out experiments/results/packed_eval_q8bert_sst2_cpu.json

Every path sees the same batches: sentences tokenized with the run's tokenizer, truncated and
padded to 128 tokens, 32 per batch (the last batch padded with copies, which are not scored).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
from transformers import AutoTokenizer

from qbert.data import readers
from qbert.export import export_packed, load_packed, load_run_model
from qbert.export.report import size_report


def batches(tokenizer, sentences: list[str], batch: int, seq: int) -> list[tuple[dict, int]]:
    out = []
    for i in range(0, len(sentences), batch):
        chunk = sentences[i:i + batch]
        n = len(chunk)
        chunk = chunk + [chunk[-1]] * (batch - n)
        enc = tokenizer(chunk, truncation=True, max_length=seq, padding="max_length", return_tensors="pt")
        out.append(({"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"],
                     "token_type_ids": enc["token_type_ids"]}, n))
    return out


def logits_of(out):
    return out["logits"] if isinstance(out, dict) else out.logits


@torch.no_grad()
def accuracy(fn, data: list[tuple[dict, int]], labels: list[int]) -> tuple[float, torch.Tensor, float]:
    preds, started = [], time.perf_counter()
    for b, n in data:
        preds.append(logits_of(fn(**b))[:n].argmax(-1))
    preds = torch.cat(preds)
    return 100.0 * (preds == torch.tensor(labels)).float().mean().item(), preds, time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("--data", type=Path, default=Path("qbert/data/sample"), help="folder with sst2/{train,dev}.tsv.gz")
    parser.add_argument("--int8", action="store_true")
    parser.add_argument("--calibration-batches", type=int, default=16)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()

    dev = readers.read_glue_tsv(args.data / "sst2" / "dev.tsv.gz", ["sentence"], "label", readers.SST2_LABELS)
    tokenizer = AutoTokenizer.from_pretrained(args.run_dir / "model")
    data = batches(tokenizer, [e.text_a for e in dev], 32, 128)
    labels = [e.label for e in dev]

    fake = load_run_model(args.run_dir)
    packed = export_packed(fake, args.run_dir / "packed.qbert.safetensors")
    loaded = load_packed(packed)
    result = {"run_dir": str(args.run_dir), "dev_sentences": len(dev), "packed_file": str(packed),
              "size": size_report(packed),
              "pipeline_accuracy": json.loads((args.run_dir / "results.json").read_text())["primary_metric"]}
    acc_fake, p_fake, t_fake = accuracy(fake, data, labels)
    acc_load, p_load, t_load = accuracy(loaded, data, labels)
    result["fake_quant"] = {"accuracy": acc_fake, "seconds": t_fake}
    result["loader"] = {"accuracy": acc_load, "seconds": t_load, "agree_with_fake_quant": int((p_fake == p_load).sum())}
    print(f"fake-quant {acc_fake:.2f}  loader {acc_load:.2f}  (same prediction on {int((p_fake == p_load).sum())}/{len(labels)})")
    if args.int8:
        from qbert.export.int8_cpu import compile_int8, quantize_int8

        train = readers.read_glue_tsv(args.data / "sst2" / "train.tsv.gz", ["sentence"], "label", readers.SST2_LABELS)
        calib = [b for b, _ in batches(tokenizer, [e.text_a for e in train[:32 * args.calibration_batches]], 32, 128)]
        started = time.perf_counter()
        converted, info = quantize_int8(loaded, data[0][0], calib)
        compiled = compile_int8(converted)
        compiled(**data[0][0])
        setup = time.perf_counter() - started
        acc_int8, p_int8, t_int8 = accuracy(compiled, data, labels)
        result["int8_pt2e"] = {"accuracy": acc_int8, "seconds": t_int8, "setup_seconds": setup, **info,
                               "agree_with_fake_quant": int((p_fake == p_int8).sum())}
        print(f"int8 PT2E {acc_int8:.2f} (same prediction as fake-quant on {int((p_fake == p_int8).sum())}/{len(labels)}); {info}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
