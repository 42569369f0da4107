"""The packed export handles every weight grid and range exactly: the full symmetric grid (all
2^b codes, no zero point), asymmetric weights beside symmetric inputs (per-group zero points),
and mse / percentile ranges (only other steps), through the file and through a run folder."""

from __future__ import annotations

import json

import pytest
import torch
from transformers import BertConfig, BertForSequenceClassification

from export_testing import TINY, batch
from qbert.export import export_packed, load_packed
from qbert.export.exporter import load_run_model, packed_tensors
from qbert.export.packing import unpack
from qbert.quant import calibration, layerwise_plan, qbert_plan, quantization_map, quantize_

PLANS = {
    "full_mse_w2": lambda: qbert_plan(2, 8, 8, groups=16, w_grid="full", w_range="mse"),
    "full_w3": lambda: qbert_plan(3, 8, 8, groups=16, w_grid="full"),
    "asym_weights_sym_inputs_mse": lambda: qbert_plan(3, 8, 8, groups=16, w_grid="asymmetric", w_range="mse"),
    "mp_full_percentile": lambda: layerwise_plan([2, 4], 8, 8, groups=16, w_grid="full", w_range="percentile",
                                                 percentile=99.0),
}


def trained_tiny(plan: str) -> torch.nn.Module:
    """A tiny BERT quantized with ``plan``, a training forward (mse ratios searched), a weight
    update after it (the ratios stay, the ranges follow), then calibrated ranges."""
    torch.manual_seed(0)
    model = BertForSequenceClassification(BertConfig(**TINY))
    quantize_(model, PLANS[plan]())
    model.train()
    model(**batch(seed=5))
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.01 * torch.randn_like(p))
    model.eval()
    with calibration(model), torch.no_grad():
        model(**batch(seed=7, size=8))
    return model


@pytest.mark.parametrize("plan", sorted(PLANS))
def test_packed_model_reproduces_the_fake_quantized_one(plan, tmp_path):
    model = trained_tiny(plan)
    loaded = load_packed(export_packed(model, tmp_path / "m.qbert.safetensors"))
    name = "bert.encoder.layer.1.intermediate.dense"
    fq = model.get_submodule(name)
    with torch.no_grad():
        torch.testing.assert_close(loaded.get_submodule(name).dequantized_weight(), fq.weight_quantizer(fq.weight),
                                   atol=0, rtol=0)
        for seed in (1, 2):
            torch.testing.assert_close(loaded(**batch(seed)).logits, model(**batch(seed)).logits, atol=1e-5, rtol=1e-5)


def test_full_grid_codes_use_all_2b_values_and_no_zero_point():
    model = trained_tiny("full_mse_w2")
    tensors, modules = packed_tensors(model)
    name = "bert.encoder.layer.0.intermediate.dense"
    info = modules[name]
    assert info["symmetric"] and info["weight"] == "mse" and f"{name}.weight.zero_point" not in tensors
    codes = unpack(tensors[f"{name}.weight.packed"], 2, info["shape"][0] * info["shape"][1])
    assert sorted(codes.unique().tolist()) == [0, 1, 2, 3]  # code 0 = level -2, unused by the restricted grid


def test_asymmetric_weights_keep_symmetric_inputs_in_the_file():
    tensors, modules = packed_tensors(trained_tiny("asym_weights_sym_inputs_mse"))
    info = modules["bert.encoder.layer.0.attention.self.query"]
    assert info["symmetric"] is False and info["input_symmetric"] is True
    assert "bert.encoder.layer.0.attention.self.query.weight.zero_point" in tensors


def test_a_run_folder_keeps_the_mse_ratios_it_trained_with(tmp_path):
    model = trained_tiny("asym_weights_sym_inputs_mse")
    folder = tmp_path / "run" / "model"
    model.save_pretrained(folder)
    (folder / "quantization_map.json").write_text(json.dumps(quantization_map(model)))
    reloaded = load_run_model(tmp_path / "run")
    name = "bert.encoder.layer.0.output.dense"
    torch.testing.assert_close(reloaded.get_submodule(name).weight_quantizer.clip_ratio,
                               model.get_submodule(name).weight_quantizer.clip_ratio, atol=0, rtol=0)
    with torch.no_grad():
        torch.testing.assert_close(reloaded(**batch(1)).logits, model(**batch(1)).logits, atol=0, rtol=0)


def test_transformers_from_pretrained_keeps_the_mse_ratios(tmp_path):
    from transformers import AutoModelForSequenceClassification

    from qbert.hf import mark_quantized
    model = trained_tiny("full_mse_w2")
    mark_quantized(model, quantization_map(model))
    model.save_pretrained(tmp_path / "model")
    loaded = AutoModelForSequenceClassification.from_pretrained(tmp_path / "model").eval()
    name = "bert.encoder.layer.1.output.dense"
    torch.testing.assert_close(loaded.get_submodule(name).weight_quantizer.clip_ratio,
                               model.get_submodule(name).weight_quantizer.clip_ratio, atol=0, rtol=0)
    with torch.no_grad():
        torch.testing.assert_close(loaded(**batch(1)).logits, model(**batch(1)).logits, atol=0, rtol=0)
