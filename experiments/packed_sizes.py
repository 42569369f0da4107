"""Packed file sizes per section vs the storage accounting and vs fp32, written as JSON.

Real MiniLM runs (packed with ``qbert-export`` first) and bert-base dimensions (random weights:
size does not depend on the values) under the Q8BERT, Q-BERT 4-bit and 2/3-bit MP plans::

    python experiments/packed_sizes.py --runs outputs/q8bert_sst2 outputs/qbert4_sst2 outputs/qbert_mp_sst2 \
        --out experiments/results/packed_sizes.json
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import torch

from qbert.export import export_packed
from qbert.export.report import format_report, size_report

BERT_BASE_PLANS = {
    "q8bert": lambda q: q.q8bert_plan(),
    "qbert_w4_g128": lambda q: q.qbert_plan(4, 8, 8, groups=128),
    "qbert_mp23_g128": lambda q: q.layerwise_plan([3] * 6 + [2] * 6, 8, 8, groups=128),
}


def bert_base(plan_name: str, folder: Path) -> Path:
    from transformers import BertConfig, BertForSequenceClassification

    import qbert.quant as q

    torch.manual_seed(0)
    model = BertForSequenceClassification(BertConfig(num_labels=2)).eval()
    q.quantize_(model, BERT_BASE_PLANS[plan_name](q))
    with q.calibration(model), torch.no_grad():
        model(input_ids=torch.randint(1000, 30000, (2, 16)))
    return export_packed(model, folder / f"bert_base_{plan_name}.qbert.safetensors")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", nargs="*", type=Path, default=[], help="run folders holding packed.qbert.safetensors")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    result = {}
    for run in args.runs:
        rep = size_report(run / "packed.qbert.safetensors")
        fp32_file = json.loads((run / "results.json").read_text())["weights"]["init_from"]
        fp32_path = Path(fp32_file) / "model" / "model.safetensors" if fp32_file else None
        rep["fp32_file_bytes"] = fp32_path.stat().st_size if fp32_path and fp32_path.is_file() else None
        result[f"minilm/{run.name}"] = rep
        print(f"== minilm/{run.name}\n{format_report(rep)}")
    with tempfile.TemporaryDirectory() as tmp:
        for name in BERT_BASE_PLANS:
            rep = size_report(bert_base(name, Path(tmp)))
            result[f"bert_base/{name}"] = rep
            print(f"== bert_base/{name}\n{format_report(rep)}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
