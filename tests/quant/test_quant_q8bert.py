"""Q8BERT: EMA ranges (train) vs frozen (eval), dynamic PTQ ranges, the delay, and PTQ == QAT on
values that already lie on the 8-bit grid."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from qbert.quant import (
    ActivationQuantizer,
    activation_quantizers,
    compute_qparams,
    fake_quantize,
    needs_calibration,
    q8bert_plan,
    quantization_map,
    quantize_,
    set_fake_quant_,
)


def _spec(plan, kind=r"attention\.self"):
    return next(spec for key, spec in plan if kind in key)


def test_q8bert_plan_quantizes_every_linear_and_embedding_at_8_bits(tiny_seq_model):
    quantize_(tiny_seq_model, q8bert_plan(momentum=0.9999))
    qmap = quantization_map(tiny_seq_model)
    linears = [n for n, m in tiny_seq_model.named_modules() if isinstance(m, nn.Linear) and ".encoder." in n]
    assert set(linears) <= set(qmap) and len(linears) == 12
    assert all(s["w_bits"] == 8 and s["symmetric"] and s["groups"] == 1 for s in qmap.values())
    assert all(qmap[n]["a_bits"] == 8 and qmap[n]["momentum"] == 0.9999 for n in linears)
    assert {"bert.embeddings.word_embeddings", "bert.embeddings.position_embeddings",
            "bert.embeddings.token_type_embeddings"} <= set(qmap)
    assert not any("LayerNorm" in n or "classifier" in n for n in qmap)


def test_ema_ranges_update_in_training_and_freeze_in_eval():
    q = ActivationQuantizer(8, symmetric=True, momentum=0.75)
    a, b = torch.tensor([1.0, -4.0]), torch.tensor([2.0, 0.5])
    q.train()
    q(a)
    assert q.running_max.item() == 4.0  # the first batch initialises
    q(b)
    assert q.running_max.item() == pytest.approx(0.75 * 4.0 + 0.25 * 2.0)
    q.eval()
    q(torch.tensor([100.0]))
    assert q.running_max.item() == pytest.approx(3.5)  # frozen


def test_dynamic_ranges_come_from_each_batch_and_need_no_calibration():
    plan = q8bert_plan(dynamic=True)
    q = ActivationQuantizer(8, dynamic=True).eval()
    for x in (torch.randn(3, 5), torch.randn(3, 5) * 50):
        scale, zp = compute_qparams(x.min(), x.max(), 8, True)
        assert torch.equal(q(x), fake_quantize(x, scale, zp, 8, True))
    assert not bool(q.initialized)  # nothing stored
    assert _spec(plan).dynamic and not _spec(q8bert_plan()).dynamic


def test_needs_calibration_only_for_stored_ranges(make_model):
    assert not needs_calibration(quantize_(make_model(), q8bert_plan(dynamic=True)))
    assert needs_calibration(quantize_(make_model(), q8bert_plan()))


def _on_grid(shape, step, generator):
    k = torch.randint(-127, 128, shape, generator=generator).float()
    k.view(-1)[0] = 127  # max |value| = 127 steps: the max-abs range reproduces `step`
    return k * step


def test_ptq_and_qat_paths_agree_on_an_already_quantized_grid():
    g = torch.Generator().manual_seed(0)
    w, x, bias = _on_grid((6, 8), 0.01, g), _on_grid((4, 8), 0.05, g), torch.randn(6, generator=g)
    outputs = {}
    for name, plan in {"ptq": q8bert_plan(dynamic=True), "qat": q8bert_plan()}.items():
        lin = nn.Linear(8, 6)
        lin.weight.data.copy_(w)
        lin.bias.data.copy_(bias)
        model = nn.Sequential()
        model.add_module("layer", lin)
        quantize_(model, {"layer": _spec(plan)})
        if name == "qat":
            model.train()(x)  # one training batch sets the EMA range
        outputs[name] = model.eval()(x)
    expected = F.linear(x, w, bias)
    assert torch.allclose(outputs["ptq"], expected, atol=1e-5)
    assert torch.allclose(outputs["qat"], expected, atol=1e-5)
    assert torch.allclose(outputs["ptq"], outputs["qat"], atol=1e-6)
    # Off the grid the two do quantize (so the check above could fail).
    x_off = x + 0.013
    assert not torch.allclose(model(x_off), F.linear(x_off, w, bias), atol=1e-5)


def test_delay_computes_in_float_and_keeps_observing_ranges(make_model, tiny_batch):
    model = quantize_(make_model(), q8bert_plan()).train()
    torch.manual_seed(0)
    float_model = make_model().train()
    inputs = {k: v for k, v in tiny_batch.items() if k != "labels"}
    set_fake_quant_(model, False)
    torch.manual_seed(1)
    out = model(**inputs).logits
    torch.manual_seed(1)
    ref = float_model(**inputs).logits
    assert torch.allclose(out, ref, atol=1e-6)
    assert all(bool(q.initialized) for q in activation_quantizers(model).values())  # observed meanwhile
    set_fake_quant_(model, True)
    torch.manual_seed(1)
    assert not torch.allclose(model(**inputs).logits, ref, atol=1e-6)
