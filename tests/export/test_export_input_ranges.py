"""Input range modes and nested Q/K/V groups in the packed file, the loader and the int8 paths."""

from __future__ import annotations

import pytest
import torch

from export_testing import batch, quantized_tiny
from qbert.export import export_packed, load_packed
from qbert.export.exporter import packed_tensors
from qbert.export.int8_cpu import quantize_int8, torchao_available
from qbert.export.kernels import convert_
from qbert.export.modules import PackedLinear
from qbert.quant import set_fake_quant_

LAYER = "bert.encoder.layer.0."


def test_the_file_records_each_sites_input_and_the_loader_quantizes_per_token(tmp_path):
    model = quantized_tiny("qbert_input_sites")
    tensors, modules = packed_tensors(model)
    query, attn_out = modules[LAYER + "attention.self.query"], modules[LAYER + "attention.output.dense"]
    ffn_in, ffn_out = modules[LAYER + "intermediate.dense"], modules[LAYER + "output.dense"]
    assert (query["input"], query["input_symmetric"], query["symmetric"]) == ("ema", False, True)
    assert LAYER + "attention.self.query.input.qparams" in tensors  # scale and zero point
    assert LAYER + "attention.self.query.weight.zero_point" not in tensors  # weights stay symmetric
    assert (attn_out["a_bits"], attn_out["input"]) == (6, "ema")
    assert (ffn_in["input"], ffn_in["input_symmetric"]) == ("dynamic", True)
    assert (ffn_out["input"], ffn_out["input_symmetric"]) == ("dynamic", False)
    loaded = load_packed(export_packed(model, tmp_path / "sites.st"))
    per_token = {n for n, m in loaded.named_modules() if isinstance(m, PackedLinear) and m.per_token}
    assert per_token == {f"bert.encoder.layer.{i}.{k}" for i in range(2) for k in ("intermediate.dense", "output.dense")}
    assert convert_(loaded, "int8") == []  # no Linear here has a symmetric 8-bit EMA input and 8-bit weight


def test_nested_groups_are_stored_per_head(tmp_path):
    model = quantized_tiny("qbert_groups_per_head")
    loaded = load_packed(export_packed(model, tmp_path / "heads.st"))
    for kind, groups in (("attention.self.key", 8), ("attention.output.dense", 16)):
        assert loaded.get_submodule(LAYER + kind).weight_scale.numel() == groups
        wq = model.get_submodule(LAYER + kind)
        torch.testing.assert_close(loaded.get_submodule(LAYER + kind).dequantized_weight(),
                                   wq.weight_quantizer(wq.weight), atol=0, rtol=0)


def test_the_int8_backend_refuses_per_token_inputs(tmp_path):
    loaded = load_packed(export_packed(quantized_tiny("qbert_input_sites"), tmp_path / "sites.st"))
    with pytest.raises(ValueError, match="per token .*static per-tensor"):
        quantize_int8(loaded, batch(5, size=4, seq=16), [batch(6, size=4, seq=16)])


@pytest.mark.skipif(not torchao_available(), reason="torchao is not installed (pip install 'torchao>=0.18')")
def test_pt2e_int8_takes_asymmetric_qat_input_ranges(tmp_path):
    model = quantized_tiny("w8a8_asym_inputs")
    loaded = load_packed(export_packed(model, tmp_path / "asym.st"))
    inputs = batch(5, size=4, seq=16)
    converted, info = quantize_int8(loaded, inputs, [batch(6, size=4, seq=16)])
    assert info["inputs"] == 12 and info["weights"] == 12  # asymmetric input ranges kept, not calibrated
    with torch.no_grad():
        fq = model(**inputs).logits
        got = converted(**inputs)
        got = got["logits"] if isinstance(got, dict) else got.logits
        set_fake_quant_(model, False)
        fp = model(**inputs).logits
    err, float_err = (got - fq).abs().max(), (fp - fq).abs().max()
    assert err <= 0.1 * float_err, (err, float_err)
