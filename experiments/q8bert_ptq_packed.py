"""A packed Q8BERT-plan model without QAT, for the inference benchmark when no QAT run is at hand:
a fine-tuned full-precision SST-2 model, ``q8bert_plan()`` (8-bit weights, EMA input ranges),
ranges observed on the *last* ``--sentences`` SST-2 training sentences (``bench_inference.py``
calibrates its peers on the first ones), written with ``export_packed``.

    OMP_NUM_THREADS=1 python experiments/q8bert_ptq_packed.py <fp32 run>/model \\
        --data /work/shared/data --out /tmp/q8_ptq.qbert.safetensors
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
from transformers import AutoModelForSequenceClassification, AutoTokenizer

from bench_inference import read_sst2
from eval_packed import batches
from qbert.export import export_packed
from qbert.quant import calibration, q8bert_plan, quantize_


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model", type=Path, help="a fine-tuned SST-2 model folder (a run's model/)")
    parser.add_argument("--data", type=Path, required=True, help="folder with sst2/train.tsv.gz")
    parser.add_argument("--sentences", type=int, default=512)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    model = AutoModelForSequenceClassification.from_pretrained(args.model).eval()
    if model.config.num_labels != 2:
        raise SystemExit(f"{args.model}: {model.config.num_labels} labels, not an SST-2 classifier")
    tokenizer = AutoTokenizer.from_pretrained(args.model)
    quantize_(model, q8bert_plan())
    train, _ = read_sst2(args.data, "train")
    with calibration(model), torch.no_grad():
        for b, n in batches(tokenizer, train[-args.sentences:], 32, 128):
            model(**{k: v[:n] for k, v in b.items()})
    print(export_packed(model, args.out))


if __name__ == "__main__":
    main()
