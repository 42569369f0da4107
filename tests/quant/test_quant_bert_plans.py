"""Plan builders for HF BERT names, checked against the exact modules they select."""

import json
import re

import pytest

from qbert.quant import (
    PLAN_BUILDERS,
    ablation_plan,
    build_plan,
    layerwise_plan,
    plan_from_dict,
    plan_to_dict,
    q8bert_plan,
    quantization_map,
    quantize_,
)

KINDS = ["attention.self.query", "attention.self.key", "attention.self.value",
         "attention.output.dense", "intermediate.dense", "output.dense"]


def layer(i, kinds=KINDS):
    return {f"bert.encoder.layer.{i}.{k}" for k in kinds}


def test_layerwise_bits_per_layer(tiny_seq_model):
    quantize_(tiny_seq_model, layerwise_plan([2, 3], e_bits=8, groups=4))
    qmap = quantization_map(tiny_seq_model)
    assert {n for n, s in qmap.items() if s["w_bits"] == 2} == layer(0)
    assert {n for n, s in qmap.items() if s["w_bits"] == 3} == layer(1)
    assert {n for n, s in qmap.items() if s["w_bits"] == 8} == {
        "bert.embeddings.word_embeddings", "bert.embeddings.position_embeddings"}


def test_layerwise_float_layer_and_too_many_layers(tiny_seq_model, make_model):
    quantize_(tiny_seq_model, layerwise_plan([32, 4], e_bits=32, groups=4))
    assert set(quantization_map(tiny_seq_model)) == layer(1)
    with pytest.raises(ValueError, match=re.escape(r"encoder\.layer\.2\.")):
        quantize_(make_model(), layerwise_plan([4, 4, 4], groups=4))


@pytest.mark.parametrize("module,expected", [
    ("word_embedding", {"bert.embeddings.word_embeddings"}),
    ("position_embedding", {"bert.embeddings.position_embeddings"}),
    ("self_attention", layer(0, KINDS[:4]) | layer(1, KINDS[:4])),
    ("ffn", layer(0, KINDS[4:]) | layer(1, KINDS[4:])),
])
def test_ablation_plans(make_model, module, expected):
    model = quantize_(make_model(), ablation_plan(module, 4, groups=4))
    assert set(quantization_map(model)) == expected


def test_q8bert_plan(tiny_seq_model):
    quantize_(tiny_seq_model, q8bert_plan())
    qmap = quantization_map(tiny_seq_model)
    assert "bert.embeddings.token_type_embeddings" in qmap and len(qmap) == 15
    assert all(s["w_bits"] == 8 and s["groups"] == 1 and s["symmetric"] for s in qmap.values())


def test_registry_and_plans_are_json_data():
    assert set(PLAN_BUILDERS) >= {"uniform", "directq", "qbert", "layerwise", "ablation"}
    plan = build_plan("qbert", w_bits=4)
    assert plan_from_dict(json.loads(json.dumps(plan_to_dict(plan)))) == plan
    assert dict(plan)[r"re:(?:.+\.)?encoder\.layer\.\d+\.attention\.self\.(?:query|key|value)"].groups == 128
    with pytest.raises(ValueError, match="known"):
        build_plan("qbret")
    with pytest.raises(ValueError, match="ablation module"):
        ablation_plan("pooler", 4)
