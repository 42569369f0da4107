"""Distillation in every QAT row (not only quant=mkq), through the whole pipeline on the tiny
BERT, and MKQ's true W4A4 run end to end; their config errors."""

from __future__ import annotations

import csv

import pytest
import torch
from safetensors.torch import load_file

from qbert import methods
from qbert.config import validate
from qbert.pipeline import run
from qbert_testing import FAST

ROWS = {
    "qbert": ["quant=qbert", "quant.w_bits=4", "quant.groups=4"],
    "qbert_mp": ["quant=qbert_mp", "quant.groups=4", "quant.allocation=manual", "quant.layer_bits=[4,2]"],
    "directq": ["quant=directq", "quant.w_bits=4"],
    "q8bert": ["quant=q8bert"],
    "ablation": ["quant=ablation", "quant.module=ffn", "quant.w_bits=4", "quant.groups=4"],
}


@pytest.fixture(scope="module")
def finetuned(tmp_path_factory):
    """One full-precision start (and teacher) shared by the runs below."""
    return f"finetuned_dir={tmp_path_factory.mktemp('ft')}"


def logged(folder) -> dict[str, list[float]]:
    with open(folder / "csv" / "metrics.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    return {k: [float(r[k]) for r in rows if r.get(k)] for k in rows[0]}


@pytest.mark.parametrize("method", sorted(ROWS))
def test_every_qat_row_distils_from_its_full_precision_start(compose_cfg, tmp_path, finetuned, method):
    results = run(compose_cfg(["task=sst2", *ROWS[method], *FAST, finetuned, "logger=csv", "distill.enabled=true"],
                              output_dir=tmp_path / method))
    assert results["distill"]["teacher"] == results["weights"]["init_from"]
    kd = logged(tmp_path / method)
    assert len(kd["train/kd_hidden"]) == results["steps"] == 3
    assert all(v > 0 for v in kd["train/kd_hidden"] + kd["train/kd_attention"] + kd["train/kd_logits"])
    assert methods.label(results["config"]).endswith(" + KD")


def test_distillation_changes_the_trained_weights_and_the_normalized_loss_is_logged(compose_cfg, tmp_path, finetuned):
    common = ["task=sst2", *ROWS["qbert"], *FAST, finetuned, "logger=csv"]
    plain = run(compose_cfg(common, output_dir=tmp_path / "off"))
    kd = run(compose_cfg([*common, "distill.enabled=true", "distill.hidden_loss=normalized_mse",
                          "distill.attention_loss=kl"], output_dir=tmp_path / "on"))
    assert plain["distill"] is None and plain["weights"]["init_from"] == kd["distill"]["teacher"]
    off, on = (load_file(tmp_path / d / "model" / "model.safetensors") for d in ("off", "on"))
    moved = [k for k in off if not (off[k] == on[k]).all()]
    assert any(k.endswith("attention.self.query.weight") for k in moved)
    hidden = logged(tmp_path / "on")["train/kd_hidden"]
    assert all(0.0 < v < 5.0 for v in hidden)  # per-layer O(1) terms, averaged over layers
    assert methods.label(kd["config"]) == "Q-BERT + normalized KD" and methods.label(plain["config"]) == "Q-BERT"


def test_mkq_true_w4a4_quantizes_the_attention_matmuls_with_integer_zero_points(compose_cfg, tmp_path, finetuned):
    from qbert.export import export_packed, load_packed
    from qbert.export.exporter import load_run_model
    from qbert.quant.attention import quantized_attentions

    results = run(compose_cfg(["task=sst2", "quant=mkq", "quant.attention_operands=true",
                               "quant.integer_zero_points=true", *FAST, finetuned], output_dir=tmp_path / "w4a4"))
    qkv = {n: s for n, s in results["quantization_map"].items() if ".attention.self." in n}
    assert qkv and all(s["attn_operands"] and s["integer_zero_point"] for s in qkv.values())
    assert methods.label(results["config"]) == "MKQ-BERT (attention matmuls quantized, integer zero points)"
    model = load_run_model(tmp_path / "w4a4")  # rebuilt from its folder: the operand quantizers come back
    assert len(quantized_attentions(model)) == 2
    offsets = [m for m in model.modules() if type(m).__name__ == "LearnedActivationQuantizer" and not m.symmetric]
    assert offsets and all(float(q.zero_point()) == round(float(q.zero_point())) for q in offsets)
    loaded = load_packed(export_packed(model, tmp_path / "w4a4.qbert.safetensors"))  # packed as evaluated
    assert quantized_attentions(loaded) == quantized_attentions(model)
    ids = torch.randint(0, model.config.vocab_size, (2, 16), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(loaded(input_ids=ids).logits, model(input_ids=ids).logits, atol=0, rtol=0)


@pytest.mark.parametrize("overrides,key", [
    (["quant=q8bert_ptq", "distill.enabled=true"], "distill.enabled"),
    (["quant=qbert", "distill.enabled=true", "distill.hidden_loss=cosine"], "distill.hidden_loss"),
    (["quant=qbert", "distill.enabled=true", "distill.attention_loss=js"], "distill.attention_loss"),
    (["quant=qbert", "quant.attention_operands=true"], "quant.attention_operands"),  # mkq only
    (["quant=directq", "quant.integer_zero_points=true", "quant.symmetric=false"], "quant.integer_zero_points"),
    (["quant=mkq", "quant.integer_zero_points=true", "quant.symmetric=true"], "quant.integer_zero_points"),
    (["quant=mkq", "quant.attention_operands=true", "quant.a_bits=32"], "quant.attention_operands"),
    # a distillation setting while distillation is off would change nothing: refused, not ignored
    (["quant=qbert", "distill.hidden_loss=normalized_mse"], "distill.hidden_loss"),
    (["quant=mkq", "distill.enabled=false", "distill.temperature=2.0"], "distill.temperature"),
])
def test_config_errors_name_the_key(compose_cfg, overrides, key):
    with pytest.raises(ValueError, match=f"config key '{key}'"):
        validate(compose_cfg(["task=sst2", *overrides]))


def test_the_paper_rows_do_not_distil_by_default_and_mkq_keeps_its_loss(compose_cfg):
    for row in ROWS.values():
        assert not validate(compose_cfg(["task=sst2", *row])).distill.enabled
    mkq = validate(compose_cfg(["task=sst2", "quant=mkq"]))
    assert mkq.distill.enabled and (mkq.distill.hidden_loss, mkq.distill.attention_loss) == ("mse", "mse")
    assert not mkq.quant.attention_operands and not mkq.quant.integer_zero_points and mkq.quant.groups == 1
