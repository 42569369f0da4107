"""SST-2 dev accuracy (all 872 sentences) of one quantized run three ways, on identical inputs:
the fake-quantized model (the run's ``model/``), the packed file's inference model
(``qbert.export.load_packed``), with ``--int8`` the CPU int8 path (torchao PT2E +
Inductor, QAT ranges, calibrated on SST-2 *training* sentences) and with ``--onnx`` the QDQ
ONNX export (``qbert.export.onnx_export``) in ONNX Runtime, with its largest logit difference
from the loader over the whole dev set. Written as JSON.

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
    acc, logits, seconds = scored(fn, data, labels)
    return acc, logits.argmax(-1), seconds


@torch.no_grad()
def scored(fn, data: list[tuple[dict, int]], labels: list[int]) -> tuple[float, torch.Tensor, float]:
    """``(accuracy, logits of the scored sentences, seconds)``."""
    logits, started = [], time.perf_counter()
    for b, n in data:
        logits.append(logits_of(fn(**b))[:n])
    seconds = time.perf_counter() - started
    logits = torch.cat(logits)
    return 100.0 * (logits.argmax(-1) == torch.tensor(labels)).float().mean().item(), logits, seconds


def onnx_eval(loaded, path: Path, data: list[tuple[dict, int]], labels: list[int], l_load: torch.Tensor) -> dict:
    """Accuracy of the ONNX export in ONNX Runtime and its largest logit difference from the loader."""
    from qbert.export.onnx_export import export_onnx
    from qbert.export.onnx_runtime import OnnxModel

    started = time.perf_counter()
    export_onnx(loaded, path)
    export_seconds = time.perf_counter() - started
    acc, logits, seconds = scored(OnnxModel(path), data, labels)
    diff = float((logits - l_load).abs().max())
    out = {"file": str(path), "bytes": path.stat().st_size, "accuracy": acc, "seconds": seconds,
           "export_seconds": export_seconds, "agree_with_loader": int((logits.argmax(-1) == l_load.argmax(-1)).sum()),
           "max_abs_logit_diff_vs_loader": diff, "mean_abs_logit_diff_vs_loader": float((logits - l_load).abs().mean())}
    print(f"ONNX Runtime {acc:.2f} (same prediction as the loader on {out['agree_with_loader']}/{len(labels)}; "
          f"max |logit diff| {diff:.3g})")
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("--data", type=Path, default=Path("qbert/data/sample"), help="folder with sst2/{train,dev}.tsv.gz")
    parser.add_argument("--int8", action="store_true")
    parser.add_argument("--onnx", action="store_true", help="also the QDQ ONNX export in ONNX Runtime")
    parser.add_argument("--no-fake-quant", action="store_true",
                        help="skip the fake-quantized model (the loader reproduces it; see the export tests)")
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
    acc_load, l_load, t_load = scored(loaded, data, labels)
    p_load = l_load.argmax(-1)
    result["loader"] = {"accuracy": acc_load, "seconds": t_load}
    p_fake, ref = p_load, "loader"  # what the int8 path is compared with
    if args.no_fake_quant:
        print(f"loader {acc_load:.2f}")
    else:
        acc_fake, p_fake, t_fake = accuracy(fake, data, labels)
        ref = "fake_quant"
        result["fake_quant"] = {"accuracy": acc_fake, "seconds": t_fake}
        result["loader"]["agree_with_fake_quant"] = int((p_fake == p_load).sum())
        print(f"fake-quant {acc_fake:.2f}  loader {acc_load:.2f}  (same prediction on {int((p_fake == p_load).sum())}/{len(labels)})")
    if args.onnx:
        result["onnx"] = onnx_eval(loaded, args.run_dir / "model.qbert.onnx", data, labels, l_load)
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
                               f"agree_with_{ref}": int((p_fake == p_int8).sum())}
        print(f"int8 PT2E {acc_int8:.2f} (same prediction as {ref} on {int((p_fake == p_int8).sum())}/{len(labels)}); {info}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
