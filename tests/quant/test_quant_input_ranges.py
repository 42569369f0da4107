"""Input range modes per site (qbert.quant.input_ranges) and Q/K/V groups nested in heads."""

from __future__ import annotations

import copy

import pytest
import torch

from qbert.quant import (
    ActivationQuantizer,
    QuantSpec,
    ablation_plan,
    assign,
    calibration,
    layerwise_plan,
    plan_to_dict,
    qbert_plan,
    quantization_map,
    quantize_,
    uniform_plan,
)
from qbert.quant.granularity import group_view
from qbert.quant.size import size_from_model
from qbert.quant.input_error import input_errors
from qbert.quant.input_ranges import SITES, InputRanges, input_spec, site_of

KINDS = {"qkv": ["attention.self.query", "attention.self.key", "attention.self.value"],
         "attn_out": ["attention.output.dense"], "ffn_in": ["intermediate.dense"], "ffn_out": ["output.dense"]}
LINEARS = [(f"bert.encoder.layer.{i}.{kind}", "Linear", True) for i in range(2)
           for kinds in KINDS.values() for kind in kinds]


def test_site_of_names_every_encoder_linear_and_nothing_else():
    for site, kinds in KINDS.items():
        for kind in kinds:
            assert site_of(f"bert.encoder.layer.3.{kind}") == site
            assert site_of(f"model.bert.encoder.layer.0.{kind}") == site
    for name in ("bert.pooler.dense", "classifier", "bert.embeddings.word_embeddings"):
        assert site_of(name) is None


def test_modes_set_the_input_and_keep_the_weight():
    base = QuantSpec(w_bits=4, groups=8, a_bits=8)
    assert input_spec(base, "ema") == base
    asym = input_spec(base, "ema_asym")
    assert not asym.symmetric and asym.weight_grid == "restricted" and not asym.dynamic
    full = input_spec(base.replace(w_grid="full"), "ema_asym")
    assert full.weight_grid == "full" and not full.symmetric
    token = input_spec(base, "per_token", 6)
    assert token.dynamic and token.per_token and token.symmetric and token.a_bits == 6
    token_asym = input_spec(base, "per_token_asym")
    assert token_asym.per_token and not token_asym.symmetric and token_asym.weight_grid == "restricted"
    with pytest.raises(ValueError, match="a_bits=32"):
        input_spec(base, "per_token", 32)


def test_per_token_spec_needs_dynamic_and_is_left_out_of_dicts_when_off():
    with pytest.raises(ValueError, match="per_token"):
        QuantSpec(a_bits=8, per_token=True)
    assert "per_token" not in QuantSpec(a_bits=8).to_dict()  # plans written before the field read the same
    spec = QuantSpec(a_bits=8, dynamic=True, per_token=True)
    assert QuantSpec.from_dict(spec.to_dict()) == spec


def test_per_token_quantizer_takes_each_tokens_own_range():
    torch.manual_seed(0)
    x = torch.randn(2, 5, 16)
    x[0, 1] *= 100  # one outlier token
    q = ActivationQuantizer(8, symmetric=False, dynamic=True, per_token=True)
    out = q(x)
    for b in range(2):
        for t in range(5):
            lo, hi = min(float(x[b, t].min()), 0.0), max(float(x[b, t].max()), 0.0)
            assert (out[b, t] - x[b, t]).abs().max() <= (hi - lo) / 255 / 2 + 1e-6
    per_tensor = ActivationQuantizer(8, symmetric=False, dynamic=True)(x)
    assert (per_tensor[1] - x[1]).abs().max() > 20 * (out[1] - x[1]).abs().max()  # the outlier widened every step
    with pytest.raises(ValueError, match="dynamic"):
        ActivationQuantizer(8, per_token=True)


def test_default_inputs_keep_the_plans_exactly_as_before():
    old = {"re:(?:.+\\.)?encoder\\.layer\\.\\d+\\.attention\\.self\\.(?:query|key|value)",
           "re:(?:.+\\.)?encoder\\.layer\\.\\d+\\.(?:attention\\.output\\.dense|(?:intermediate|output)\\.dense)"}
    assert old <= set(plan_to_dict(qbert_plan(4)))
    assert plan_to_dict(qbert_plan(4)) == plan_to_dict(qbert_plan(4, inputs=InputRanges()))
    assert plan_to_dict(ablation_plan("ffn", 4, a_bits=8)) == plan_to_dict(
        ablation_plan("ffn", 4, a_bits=8, inputs=InputRanges("ema", {"ffn_out": "ema"})))


def test_site_overrides_reach_exactly_their_modules():
    inputs = InputRanges("ema_asym", {"ffn_out": "per_token_asym"}, {"ffn_out": 8, "qkv": 6})
    specs = assign(uniform_plan(4, 32, 4, groups=4, inputs=inputs), LINEARS)
    for name, spec in specs.items():
        site = site_of(name)
        assert spec.a_bits == {"ffn_out": 8, "qkv": 6}.get(site, 4), name
        assert spec.per_token == (site == "ffn_out") and not spec.symmetric, name
        assert spec.weight_grid == "restricted" and spec.w_bits == 4 and spec.groups == 4, name
    mp = assign(layerwise_plan([2, 32], 32, 4, inputs=inputs, groups=4), LINEARS)
    assert set(mp) == {n for n, *_ in LINEARS if ".layer.0." in n}  # a float layer stays float
    assert mp["bert.encoder.layer.0.output.dense"].per_token


def test_ablation_refuses_sites_its_module_does_not_quantize():
    with pytest.raises(ValueError, match="qkv"):
        ablation_plan("ffn", 4, a_bits=8, inputs=InputRanges(sites={"qkv": "per_token"}))
    with pytest.raises(ValueError, match="word_embedding"):
        ablation_plan("word_embedding", 4, inputs=InputRanges("per_token"))
    specs = assign(ablation_plan("ffn", 4, a_bits=8, inputs=InputRanges(sites={"ffn_out": "per_token"})), LINEARS)
    assert {site_of(n) for n in specs} == {"ffn_in", "ffn_out"}
    assert [site_of(n) for n, s in specs.items() if s.per_token] == ["ffn_out", "ffn_out"]


@pytest.mark.parametrize("heads,rows,per_head", [(12, 384, 2), (12, 384, 4), (4, 64, 8), (12, 768, 8)])
def test_nested_groups_never_straddle_a_head(heads, rows, per_head):
    groups = assign(qbert_plan(4, 32, groups=128, groups_per_head=per_head, num_heads=heads),
                    LINEARS)
    g = groups["bert.encoder.layer.0.attention.self.query"].groups
    assert g == heads * per_head
    head = torch.arange(rows) // (rows // heads)  # the head of each output row (HF's layout)
    members = group_view(head.float().reshape(rows, 1), g)  # [G, rows/G, 1]: each group's rows
    assert bool((members == members[:, :1]).all())  # one head per group
    assert sorted({int(m[0, 0]) for m in members}) == list(range(heads))


def test_contiguous_groups_do_straddle_heads_on_minilm():
    head = torch.arange(384) // 32  # MiniLM-L6: 12 heads of 32 rows; 128 groups of 3 rows
    members = group_view(head.float().reshape(384, 1), 128)
    assert int((members != members[:, :1]).any(1).sum()) > 0


def test_one_group_per_head_is_heads_as_groups(tiny_seq_model):
    nested = qbert_plan(4, groups=2, groups_per_head=1, num_heads=4)
    assert plan_to_dict(nested) == plan_to_dict(qbert_plan(4, groups=2, heads_as_groups=True, num_heads=4))
    with pytest.raises(ValueError, match="only one"):
        qbert_plan(4, groups_per_head=1, heads_as_groups=True, num_heads=4)
    with pytest.raises(ValueError, match="num_heads"):
        qbert_plan(4, groups_per_head=2)
    quantize_(tiny_seq_model, qbert_plan(4, groups=2, groups_per_head=2, num_heads=4))
    assert quantization_map(tiny_seq_model)["bert.encoder.layer.0.attention.self.key"]["groups"] == 8


def test_input_errors_are_measured_per_site_on_real_tokens(tiny_seq_model, tiny_batch):
    batch = {k: v for k, v in tiny_batch.items() if k != "labels"}
    errors = {}
    for mode in ("ema", "per_token_asym"):
        model = quantize_(copy.deepcopy(tiny_seq_model), uniform_plan(32, 32, 4, inputs=InputRanges(mode)))
        with calibration(model), torch.no_grad():
            model(**batch)
        errors[mode] = input_errors(model, [batch])
    assert set(errors["ema"]) == set(SITES)
    assert all(0 < errors["per_token_asym"][s] < errors["ema"][s] for s in SITES)


def test_storage_counts_no_input_range_for_per_token_inputs(tiny_seq_model):
    ema = size_from_model(quantize_(copy.deepcopy(tiny_seq_model), uniform_plan(4, 32, 8)), "storage")
    token = size_from_model(quantize_(copy.deepcopy(tiny_seq_model), uniform_plan(
        4, 32, 8, inputs=InputRanges(sites={"ffn_out": "per_token"}))), "storage")
    assert ema.overhead_bits["encoder"] - token.overhead_bits["encoder"] == 2 * 2 * 32  # 2 layers x (scale, zero point)
