"""Export -> packed file -> loader reproduces the fake-quantized model; sizes match the accounting."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from qbert.export import export_packed, load_packed
from qbert.export.modules import PackedEmbedding, PackedLinear
from qbert.export.report import size_report
from qbert.quant import QuantLinear, quantization_map
from export_testing import PLANS, batch, quantized_tiny


@pytest.mark.parametrize("plan", sorted(PLANS))
def test_loader_reproduces_fake_quant_logits(plan, tmp_path):
    model = quantized_tiny(plan)
    path = export_packed(model, tmp_path / f"{plan}.qbert.safetensors")
    loaded = load_packed(path)
    assert not any(isinstance(m, QuantLinear) for m in loaded.modules())
    n_packed = sum(isinstance(m, (PackedLinear, PackedEmbedding)) for m in loaded.modules())
    assert n_packed == len(quantization_map(model))
    with torch.no_grad():
        for seed in (1, 2):
            ref = model(**batch(seed)).logits
            got = loaded(**batch(seed)).logits
            torch.testing.assert_close(got, ref, atol=1e-5, rtol=1e-5)


def test_loader_weights_are_the_fake_quantized_weights(q8_model, q8_file):
    loaded = load_packed(q8_file)
    name = "bert.encoder.layer.1.intermediate.dense"
    fq = q8_model.get_submodule(name)
    with torch.no_grad():
        torch.testing.assert_close(loaded.get_submodule(name).dequantized_weight(), fq.weight_quantizer(fq.weight), atol=0, rtol=0)


@pytest.mark.parametrize("plan", ["q8bert", "qbert_mp_asym", "qbert_w4"])
def test_file_sections_match_storage_accounting(plan, tmp_path):
    rep = size_report(export_packed(quantized_tiny(plan), tmp_path / "m.qbert.safetensors"))
    for section in ("embeddings", "encoder", "other"):
        r = rep["sections"][section]
        assert r["file_bytes"] == pytest.approx(r["accounted_bytes"], rel=0.02), (section, r)
    assert rep["file_bytes"] == rep["header_bytes"] + sum(r["file_bytes"] for r in rep["sections"].values())


def test_low_bit_file_is_smaller_than_8_bit(tmp_path):
    enc = {p: size_report(export_packed(quantized_tiny(p), tmp_path / f"{p}.st"))["sections"]["encoder"]["file_bytes"]
           for p in ("q8bert", "qbert_mp_asym")}
    assert enc["qbert_mp_asym"] < 0.45 * enc["q8bert"]  # 2/3 bits vs 8 (plus fp32 biases/LayerNorms)


def test_loader_imports_no_training_code(q8_file):
    code = ("import sys; from qbert.export.loader import load_packed; load_packed(sys.argv[1]); "
            "bad = [m for m in sys.modules if m.startswith(('lightning', 'qbert.train', 'qbert.pipeline', 'hydra'))]; "
            "print(bad); sys.exit(1 if bad else 0)")
    done = subprocess.run([sys.executable, "-c", code, str(q8_file)], capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr
