"""Integer paths against the fake-quantized / loaded model: torchao PT2E (CPU), ``torch._int_mm``
W8A8 and the tinygemm int4 weight-only kernel (both run on CPU here; CUDA is the same op)."""

from __future__ import annotations

import pytest
import torch

from export_testing import batch, quantized_tiny
from qbert.export import export_packed, load_packed
from qbert.export.int8_cpu import float_copy, torchao_available
from qbert.export.kernels import Int4WeightLinear, Int8Linear, convert_
from qbert.quant import set_fake_quant_


def _logits(out):
    return out["logits"] if isinstance(out, dict) else out.logits


def test_int_mm_w8a8_matches_loader(q8_file):
    loaded = load_packed(q8_file)
    with torch.no_grad():
        ref = loaded.bert(**batch(3)).last_hidden_state
        swapped = convert_(loaded, "int8")
        got = loaded.bert(**batch(3)).last_hidden_state
    assert len(swapped) == 12 and all(isinstance(loaded.get_submodule(n), Int8Linear) for n in swapped)
    torch.testing.assert_close(got, ref, atol=1e-4, rtol=1e-4)  # int32 accumulation vs fp32 sums


def test_int4_weight_only_matches_float_qw(tmp_path):
    loaded = load_packed(export_packed(quantized_tiny("qbert_w4"), tmp_path / "w4.st"))
    reference = float_copy(loaded)[0]  # Q(W) in float, inputs not quantized: what weight-only computes
    with torch.no_grad():
        ref = reference.bert(**batch(4)).last_hidden_state
        swapped = convert_(loaded, "int4")
        got = loaded.bert(**batch(4)).last_hidden_state
    assert len(swapped) == 12 and all(isinstance(loaded.get_submodule(n), Int4WeightLinear) for n in swapped)
    torch.testing.assert_close(got, ref, atol=1e-4, rtol=1e-4)


def test_convert_skips_ineligible_modules(tmp_path):
    loaded = load_packed(export_packed(quantized_tiny("qbert_mp_asym"), tmp_path / "mp.st"))
    assert convert_(loaded, "int8") == [] and convert_(loaded, "int4") == []  # asymmetric weights
    with pytest.raises(ValueError, match="mode"):
        convert_(loaded, "int3")


@pytest.mark.slow  # one Inductor compile (~20 s on one core)
@pytest.mark.skipif(not torchao_available(), reason="torchao is not installed (pip install 'torchao>=0.18')")
def test_pt2e_int8_path_matches_fake_quant(q8_model, q8_file):
    from qbert.export.int8_cpu import compile_int8, quantize_int8

    loaded = load_packed(q8_file)
    inputs = batch(5, size=4, seq=16)
    converted, info = quantize_int8(loaded, inputs, [batch(6, size=4, seq=16)])
    assert info["inputs"] == 12 and info["weights"] == 12  # every encoder Linear took its QAT ranges
    compiled = compile_int8(converted)
    with torch.no_grad():
        fq = q8_model(**inputs).logits
        got = _logits(compiled(**inputs))
        set_fake_quant_(q8_model, False)
        fp = q8_model(**inputs).logits  # the float model the quantized one came from
    err, float_err = (got - fq).abs().max(), (fp - fq).abs().max()
    print(f"int8 vs fake-quant {err:.3g}, float vs fake-quant {float_err:.3g}")
    assert err <= 0.1 * float_err, (err, float_err)  # far closer to fake-quant than float is
    assert got.argmax(-1).tolist() == fq.argmax(-1).tolist()
