"""Quantized attention matmuls (MKQ's true W4A4) and integer zero points of learned ranges."""

from __future__ import annotations

import pytest
import torch
from transformers import BertConfig, BertForSequenceClassification

from qbert.quant import calibration, dequantize_, mkq_plan, plan_from_dict, quantization_map, quantize_
from qbert.quant.attention import QuantizedMatmulAttention, quantized_attentions
from qbert.quant.learned import LearnedActivationQuantizer
from qbert.quant.plan import QuantSpec

CONFIG = dict(vocab_size=100, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
              max_position_embeddings=64)


def tiny(seed=0, attn="sdpa"):
    torch.manual_seed(seed)
    model = BertForSequenceClassification(BertConfig(**CONFIG))
    model.set_attn_implementation(attn)
    return model.eval()


def batch():
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(1, 100, (4, 12), generator=g)
    mask = torch.ones_like(ids)
    mask[:2, 8:] = 0
    return {"input_ids": ids, "attention_mask": mask}


def w4a4(model, **kw):
    quantize_(model, mkq_plan(attention_operands=True, **kw))
    with calibration(model), torch.no_grad():
        model(**batch())
    return model


def operands(model) -> dict[str, list[torch.Tensor]]:
    """The tensors each operand quantizer hands to the matmuls in one forward."""
    seen: dict[str, list[torch.Tensor]] = {}
    hooks = [q.register_forward_hook(lambda m, i, o, n=n: seen.setdefault(n, []).append(o.detach()))
             for attn in model.modules() if isinstance(attn, QuantizedMatmulAttention)
             for n, q in attn.operand_quantizers.items()]
    with torch.no_grad():
        model(**batch())
    for h in hooks:
        h.remove()
    return seen


def test_the_four_matmul_operands_take_at_most_2_to_the_a_bits_values():
    model = w4a4(tiny())
    assert quantized_attentions(model) == [f"bert.encoder.layer.{i}.attention.self" for i in range(2)]
    seen = operands(model)
    assert sorted(seen) == ["key", "probs", "query", "value"]
    for name, tensors in seen.items():
        for t in tensors:
            assert 2 < t.unique().numel() <= 2**4, name
    assert all(bool((p >= 0).all()) for p in seen["probs"])  # probabilities: the unsigned grid
    # without the option the same projections' outputs are float: hundreds of values
    plain = quantize_(tiny(), mkq_plan())
    with calibration(plain), torch.no_grad():
        plain(**batch())
    out = []
    plain.bert.encoder.layer[0].attention.self.query.register_forward_hook(lambda m, i, o: out.append(o))
    with torch.no_grad():
        plain(**batch())
    assert out[0].unique().numel() > 100 and not quantized_attentions(plain)


def test_integer_zero_points_keep_every_offset_on_the_grid():
    model = w4a4(tiny(), integer_zero_points=True)
    quantizers = [m for m in model.modules() if isinstance(m, LearnedActivationQuantizer) and not m.symmetric]
    assert len(quantizers) == 2 * (6 + 4)  # 6 Linear inputs and 4 operands per layer
    for q in quantizers:
        z = q.zero_point()
        assert float(z) == round(float(z))
        assert torch.allclose(q.effective_offset(), -z * q.scale, atol=1e-7)
    # the latent offsets are not on the grid: the rounding is what puts them there
    assert any(abs(float(q.offset / q.scale) - round(float(q.offset / q.scale))) > 1e-3 for q in quantizers)
    float_offsets = w4a4(tiny())
    zps = [float(m.zero_point()) for m in float_offsets.modules()
           if isinstance(m, LearnedActivationQuantizer) and not m.symmetric]
    assert any(z != round(z) for z in zps)  # LSQ+ (the default): float offsets


def test_eager_and_sdpa_masks_give_the_same_quantized_attention():
    model = w4a4(tiny())
    with torch.no_grad():
        sdpa = model(**batch()).logits
        model.set_attn_implementation("eager")
        eager = model(**batch(), output_attentions=True)
    assert torch.allclose(sdpa, eager.logits, atol=1e-6)
    probs = eager.attentions[0]  # the float probabilities, padding keys at 0
    assert torch.allclose(probs.sum(-1), torch.ones(()), atol=1e-5) and float(probs[0, :, :, 8:].abs().max()) == 0.0


def test_training_reaches_the_operand_steps_and_the_plan_rebuilds_them():
    model = w4a4(tiny(), integer_zero_points=True).train()
    out = model(**batch(), labels=torch.tensor([0, 1, 0, 1]))
    out.loss.backward()
    attn = model.bert.encoder.layer[1].attention.self
    assert all(q.scale.grad is not None and float(q.scale.grad.abs()) > 0 for q in attn.operand_quantizers.values())
    model.eval()
    with torch.no_grad():
        expected = model(**batch()).logits
    fresh = quantize_(tiny(seed=9), plan_from_dict(quantization_map(model)))
    fresh.load_state_dict(model.state_dict())  # strict: the operand quantizers' state has a home
    with torch.no_grad():
        assert torch.equal(fresh(**batch()).logits, expected)
    dequantize_(fresh)
    assert not quantized_attentions(fresh) and type(fresh.bert.encoder.layer[0].attention.self).__name__ == "BertSelfAttention"
    assert not any("operand_quantizers" in k for k in fresh.state_dict())


def test_an_attention_with_only_some_projections_asking_is_refused_before_anything_changes():
    spec = QuantSpec(w_bits=4, a_bits=4, symmetric=False, learned="lsq")
    model = tiny()
    plan = [("re:.*layer\\.0\\.attention\\.self\\.query", spec.replace(attn_operands=True)),
            ("re:.*layer\\.0\\.attention\\.self\\.(key|value)", spec)]
    with pytest.raises(ValueError, match="query, key and value alike"):
        quantize_(model, plan)
    assert not quantization_map(model)  # nothing was replaced
    mixed = [("re:.*layer\\.0\\.attention\\.self\\.query", spec.replace(attn_operands=True, a_bits=8)),
             ("re:.*layer\\.0\\.attention\\.self\\.(key|value)", spec.replace(attn_operands=True))]
    with pytest.raises(ValueError, match="quantize their outputs differently"):
        quantize_(model, mixed)


@pytest.mark.parametrize("kw,match", [
    ({"attn_operands": True}, "learned"),  # EMA ranges: not implemented, refused
    ({"integer_zero_point": True}, "learned"),
    ({"integer_zero_point": True, "learned": "lsq", "symmetric": True}, "no offset"),
])
def test_specs_that_cannot_take_effect_are_refused(kw, match):
    with pytest.raises(ValueError, match=match):
        QuantSpec(w_bits=4, a_bits=4, **kw)


def test_packed_export_computes_with_the_integer_zero_points(tmp_path):
    from qbert.export import export_packed, load_packed
    from qbert.export.exporter import packed_tensors

    model = quantize_(tiny(), mkq_plan(integer_zero_points=True))
    with calibration(model), torch.no_grad():
        model(**batch())
    tensors, _ = packed_tensors(model)
    steps, offsets = zip(*(t.tolist() for k, t in tensors.items() if k.endswith(".input.qparams")))
    assert all(o / s == pytest.approx(round(o / s), abs=1e-4) for s, o in zip(steps, offsets))
    loaded = load_packed(export_packed(model, tmp_path / "m.qbert.safetensors"))
    with torch.no_grad():
        assert torch.allclose(loaded(**batch()).logits, model(**batch()).logits, atol=1e-5)
