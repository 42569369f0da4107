"""Bit allocation: Q-BERT's rule and the integer program (against brute force)."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from transformers import BertConfig

from tiny_bert import tiny_model
from qbert.hessian import BudgetError, encoder_mib, ilp_allocation, layer_costs, rule_allocation, weight_perturbation
from qbert.hessian.hvp import layer_blocks
from qbert.quant.quantizers import WeightQuantizer
from qbert.quant.size import BERT_BASE


def test_rule_gives_the_high_width_to_the_most_sensitive_layers():
    scores = [0.5, 3.0, 1.0, 2.0]
    assert rule_allocation(scores, 2, 3) == [2, 3, 2, 3]  # half the layers by default
    assert rule_allocation(scores, 2, 4, high_layers=1) == [2, 4, 2, 2]
    assert rule_allocation(scores, 2, 4, high_layers=0) == [2, 2, 2, 2]
    assert rule_allocation(scores, 2, 3, avg_bits=2.75) == [2, 3, 3, 3]  # 3 high: mean 2.75
    assert rule_allocation(scores, 2, 3, avg_bits=2.7) == [2, 3, 2, 3]  # the most within the mean
    assert rule_allocation([1.0, 1.0, 1.0], 2, 3, high_layers=1) == [3, 2, 2]  # ties: lower index first


@pytest.mark.parametrize("kwargs,match", [
    ({"high_layers": 5}, "encoder layers"),
    ({"avg_bits": 3.5}, "outside"),
    ({"high_layers": 1, "avg_bits": 2.5}, "not both"),
])
def test_rule_refuses_budgets_it_cannot_meet(kwargs, match):
    with pytest.raises(ValueError, match=match):
        rule_allocation([1.0, 2.0, 3.0, 4.0], 2, 3, **kwargs)


def brute_force(scores, perturbation, cost, choices, budget):
    best = None
    for picks in itertools.product(range(len(choices)), repeat=len(scores)):
        size = sum(cost[i, j] for i, j in enumerate(picks))
        if size > budget + 1e-9:
            continue
        value = sum(abs(scores[i]) * perturbation[i, j] for i, j in enumerate(picks))
        if best is None or value < best[0] - 1e-12:
            best = (value, [choices[j] for j in picks])
    return best


@pytest.mark.parametrize("seed", range(6))
def test_ilp_matches_brute_force(seed):
    rng = np.random.default_rng(seed)
    choices = [2, 3, 4, 8]
    n = 5
    scores = rng.lognormal(size=n)
    # perturbation falls ~4x per extra bit; costs grow with bits and differ per layer
    perturbation = rng.uniform(0.5, 2.0, (n, 1)) * 4.0 ** -np.array(choices, float)[None, :]
    cost = rng.uniform(0.5, 1.5, (n, 1)) * np.array(choices, float)[None, :]
    budget = float(cost[:, 0].sum() + rng.uniform(0.2, 0.8) * (cost[:, -1].sum() - cost[:, 0].sum()))
    bits, objective = ilp_allocation(scores, perturbation, cost, choices, budget)
    expected_value, _ = brute_force(scores, perturbation, cost, choices, budget)
    assert objective == pytest.approx(expected_value, rel=1e-6)
    index = {b: j for j, b in enumerate(choices)}
    assert sum(cost[i, index[b]] for i, b in enumerate(bits)) <= budget + 1e-9


def test_ilp_refuses_an_impossible_budget():
    cost = np.array([[1.0, 2.0], [1.0, 2.0]])
    with pytest.raises(BudgetError, match="below the smallest allocation"):
        ilp_allocation([1.0, 1.0], np.ones((2, 2)), cost, [2, 4], budget=1.5)


def test_ilp_spends_the_budget_on_the_sensitive_layer():
    perturbation = np.array([[16.0, 1.0], [16.0, 1.0]])
    cost = np.array([[2.0, 4.0], [2.0, 4.0]])
    assert ilp_allocation([10.0, 1.0], perturbation, cost, [2, 4], budget=6.0)[0] == [4, 2]
    assert ilp_allocation([1.0, 10.0], perturbation, cost, [2, 4], budget=6.0)[0] == [2, 4]


def test_layer_costs_add_up_to_the_encoder_size():
    config = BertConfig(hidden_size=BERT_BASE.hidden, num_hidden_layers=BERT_BASE.layers,
                        num_attention_heads=BERT_BASE.heads, intermediate_size=BERT_BASE.intermediate)
    cost = layer_costs(config, [2, 3], groups=128)
    assert cost.shape == (12, 2) and np.allclose(cost, cost[0])  # identical layers
    bits = [3] * 6 + [2] * 6
    assert cost[:6, 1].sum() + cost[6:, 0].sum() == pytest.approx(encoder_mib(config, bits, groups=128))
    # the paper's "Q-BERT MP 2/3" size for SST-2 / SQuAD: half the layers at 3 bits, 25.4 MB
    assert round(encoder_mib(config, bits, groups=128), 1) == 25.4


def test_weight_perturbation_falls_with_more_bits():
    model = tiny_model()
    blocks = layer_blocks(model)
    pert = weight_perturbation(model, [2, 3, 4, 8], groups=4, heads_as_groups=True, num_heads=2)
    assert pert.shape == (2, 4)
    assert (np.diff(pert, axis=1) < 0).all()
    # by hand for layer 0 at 2 bits: Q/K/V with 2 groups (heads), the others with 4
    expected = 0.0
    for name, w in blocks[0]:
        groups = 2 if name.rsplit(".", 1)[1] in ("query", "key", "value") else 4
        expected += float((WeightQuantizer(2, groups)(w.detach()) - w.detach()).pow(2).sum())
    assert pert[0, 0] == pytest.approx(expected)


def test_weight_perturbation_and_costs_follow_the_weight_range_settings(compose_cfg):
    from qbert.config import validate
    from qbert.hessian.mixed_precision import _plan_kw
    model = tiny_model()
    quant = validate(compose_cfg(["model=tiny", "quant=qbert_mp", "quant.w_range=mse", "quant.w_grid=full"])).quant
    kw = _plan_kw(quant, model.config)
    assert (kw["w_range"], kw["w_grid"], kw["percentile"]) == ("mse", "full", 99.99)
    minmax = weight_perturbation(model, [2, 3], groups=4, heads_as_groups=True, num_heads=2)
    mse = weight_perturbation(model, [2, 3], groups=4, **kw)
    assert (mse < minmax).all()  # the ILP weighs the perturbation the run will have
    asym = weight_perturbation(model, [2], groups=4, w_grid="asymmetric")
    cost = layer_costs(model.config, [2], groups=4, w_grid="asymmetric")
    assert asym.shape == cost.shape == (2, 1)
