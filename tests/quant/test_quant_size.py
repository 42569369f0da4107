"""Size accounting: Q-BERT's "Size w/o-e" row for BERT-base, and config == model accounting."""

import json

import pytest

from qbert.quant import (
    BERT_BASE,
    QuantSpec,
    ablation_plan,
    directq_plan,
    layerwise_plan,
    mkq_plan,
    qbert_plan,
    quantize_,
    size_from_config,
    size_from_model,
    uniform_plan,
)
from qbert.quant.size import BertDims, bert_slots

FFN_3 = (r"re:(?:.+\.)?encoder\.layer\.3\.(?:intermediate|output)\.dense",
         QuantSpec(w_bits=3, groups=128, a_bits=8))


def enc(plan, **kw):
    return size_from_config(BERT_BASE, plan, **kw).encoder_mib


def test_bert_base_parameter_count():
    slots = [s for s in bert_slots(BERT_BASE) if s.section == "encoder"]
    assert sum(s.weight + s.bias for s in slots) == 85_054_464


def test_full_precision_row():
    assert round(enc(None), 1) == 324.5
    assert enc(None) == pytest.approx(85_054_464 * 4 / 2**20)


@pytest.mark.parametrize("bits,paper", [(8, 81.2), (4, 40.6), (3, 30.5)])
def test_qbert_rows_match_paper(bits, paper):
    assert round(enc(qbert_plan(bits)), 1) == paper


def test_qbert_2bit_row_known_mismatch():
    # Paper: 20.4. Our convention gives 20.349 (documented in qbert/quant/size.py).
    size = enc(qbert_plan(2))
    assert size == pytest.approx(20.349, abs=5e-4)
    assert abs(size - 20.4) < 0.06


def test_mixed_precision_rows():
    # SST-2 / SQuAD "2/3 MP" = 25.4: six layers at 3 bits (same size as "2/4 MP" = 30.5 with six at 4).
    assert round(enc(layerwise_plan([3] * 6 + [2] * 6)), 1) == 25.4
    assert round(enc(layerwise_plan([4] * 6 + [2] * 6)), 1) == 30.5
    # MNLI / CoNLL 23.4: not reachable with whole layers (22.9 / 23.7), reachable with one more FFN block.
    assert round(enc(layerwise_plan([3] * 3 + [2] * 9)), 1) == 22.9
    assert round(enc(layerwise_plan([3] * 4 + [2] * 8)), 1) == 23.7
    assert round(enc([FFN_3, *layerwise_plan([3] * 3 + [2] * 9)]), 1) == 23.4


def test_embeddings_and_ratios():
    r = size_from_config(BERT_BASE, qbert_plan(4, e_bits=8))
    assert r.compression("embeddings") == pytest.approx(4.0, abs=0.01)
    assert r.compression("encoder") == pytest.approx(7.99, abs=0.01)
    assert r.to_dict()["encoder"]["overhead_mib"] == pytest.approx(72 * 128 * 8 / 2**20, abs=1e-4)
    assert json.loads(json.dumps(r.to_dict()))["convention"] == "paper"
    assert round(enc(directq_plan(4)), 1) == 40.6  # one group per matrix: almost no overhead


def test_storage_convention_is_larger():
    for bits in (2, 4, 8):
        paper = enc(qbert_plan(bits))
        storage = enc(qbert_plan(bits), convention="storage")
        assert paper < storage < paper + 0.5
    with pytest.raises(ValueError, match="convention"):
        enc(None, convention="bytes")


def test_plan_errors_match_surgery():
    with pytest.raises(ValueError, match="groups=5"):
        enc(qbert_plan(4, groups=5))
    with pytest.raises(ValueError, match="match no"):
        enc([("bert.nope", QuantSpec())])


@pytest.mark.parametrize("convention", ["paper", "storage"])
@pytest.mark.parametrize("plan", [
    uniform_plan(4, e_bits=8, a_bits=8, groups=4),
    layerwise_plan([2, 3], e_bits=4, groups="channel"),
    ablation_plan("ffn", 2, groups=8),
    ablation_plan("word_embedding", 4, e_groups=4),
    mkq_plan(4, 4, 8, groups=4),  # learned steps and offsets are parameters of the model
])
def test_model_accounting_equals_config_accounting(make_model, tiny_config, plan, convention):
    model = quantize_(make_model(), plan)
    from_model = size_from_model(model, convention)
    from_config = size_from_config(tiny_config, plan, convention=convention, num_labels=2)
    assert from_model.bits == from_config.bits
    assert from_model.overhead_bits == from_config.overhead_bits
    assert BertDims.from_config(tiny_config).hidden == 32


@pytest.mark.parametrize("groups", [1, 4])
def test_mkq_w4a4_size_counted_by_hand(make_model, groups):
    """What a W4A4 MKQ-BERT of the tiny config (hidden 32, FFN 64, 2 layers, vocab 100, 64
    positions, 2 labels) with ``groups`` weight groups stores, counted by hand: the learned steps
    are charged once (as the group ranges, not again as parameters), and the weights are
    symmetric (no zero point) though the inputs are asymmetric."""
    model = quantize_(make_model(), mkq_plan(4, 4, 8, groups=groups))
    G, F = groups, 32
    # One encoder layer: Q, K, V, attention output (32x32 + 32 bias each), FFN in (64x32 + 64),
    # FFN out (32x64 + 32), two LayerNorms (32 + 32 each). 6 quantized Linears.
    weights = 4 * 32 * 32 + 64 * 32 + 32 * 64  # 8,192
    biases = 4 * 32 + 64 + 32  # 224
    layernorms = 2 * (32 + 32)  # 128
    storage_layer = (weights * 4 + biases * F + layernorms * F
                     + 6 * G * F  # one learned step per weight group, no zero point
                     + 6 * 2 * F)  # the input's learned step and offset
    paper_layer = (weights + biases + layernorms) * 4 + 6 * G * 2 * F  # two numbers a group; inputs not counted
    # Embeddings: word (100x32) and position (64x32) tables at 8 bits with one symmetric max-abs
    # group each; the token-type table (2x32) and the LayerNorm (32 + 32) stay float.
    tables, float_emb = 100 * 32 + 64 * 32, 2 * 32 + 64
    storage_emb = tables * 8 + 2 * F + float_emb * F
    paper_emb = tables * 8 + 2 * 2 * F + float_emb * F
    other = (32 * 32 + 32 + 2 * 32 + 2) * F  # pooler and classifier, float

    storage = size_from_model(model, "storage")
    assert storage.bits == {"encoder": 2 * storage_layer, "embeddings": storage_emb, "other": other}
    assert storage.overhead_bits["encoder"] == 2 * (6 * G * F + 6 * 2 * F)
    paper = size_from_model(model, "paper")
    assert paper.bits == {"encoder": 2 * paper_layer, "embeddings": paper_emb, "other": other}
    # The learned tensors the counts stand for: one step per group and a step + offset per input.
    steps = [p for n, p in model.named_parameters() if n.endswith("weight_quantizer.scale")]
    inputs = [p for n, p in model.named_parameters() if n.startswith("bert.encoder") and "input_quantizer" in n]
    assert sum(p.numel() for p in steps) == 2 * 6 * G and sum(p.numel() for p in inputs) == 2 * 6 * 2
