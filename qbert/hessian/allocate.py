"""From per-layer sensitivity to per-layer bit widths under a budget.

* ``rule_allocation``: Q-BERT's "2/3 MP" / "2/4 MP": every layer at a low or a high width, the
  most sensitive layers high. How many are high: a count, or the most that keep the mean width
  within a target.
* ``ilp_allocation`` (HAWQ-v3): one width per layer from a set of choices, minimising
  sum_i sensitivity_i x ||Q_b(W_i) - W_i||^2 subject to a size budget, solved exactly as an
  integer linear program by ``scipy.optimize.milp`` (HiGHS).

Costs come from the size accounting (``qbert.quant.size``, the paper's convention), so a budget
in MiB means what the "Size w/o-e" column means.
"""

from __future__ import annotations

import math
from typing import Optional, Sequence

import numpy as np
import torch
from torch import nn

from qbert.hessian.hvp import layer_blocks, layer_index
from qbert.quant.bert_plans import layerwise_plan
from qbert.quant.granularity import Groups
from qbert.quant.modules import QUANT_MODULES, weight_quantizer_for
from qbert.quant.plan import assign
from qbert.quant.size import MIB_BITS, size_from_config


class BudgetError(ValueError):
    """No allocation meets the budget."""


def rule_allocation(scores: Sequence[float], low: int, high: int, high_layers: Optional[int] = None,
                    avg_bits: Optional[float] = None) -> list[int]:
    """Q-BERT's rule: the ``k`` layers with the largest score at ``high`` bits, the rest at ``low``.

    ``k`` = ``high_layers``; else the largest k with mean width <= ``avg_bits``; else half the
    layers (rounded down). Ties keep the lower layer index first.
    """
    n = len(scores)
    if not low < high:
        raise ValueError(f"the high width ({high}) must exceed the low width ({low})")
    if high_layers is not None and avg_bits is not None:
        raise ValueError("give high_layers or avg_bits, not both")
    if avg_bits is not None:
        if not low <= avg_bits <= high:
            raise BudgetError(f"a mean width of {avg_bits} is outside [{low}, {high}]")
        k = math.floor(n * (avg_bits - low) / (high - low) + 1e-9)
    else:
        k = n // 2 if high_layers is None else high_layers
    if not 0 <= k <= n:
        raise BudgetError(f"high_layers={k} but the model has {n} encoder layers")
    order = sorted(range(n), key=lambda i: (-scores[i], i))
    high_set = set(order[:k])
    return [high if i in high_set else low for i in range(n)]


def ilp_allocation(scores: Sequence[float], perturbation: np.ndarray, cost: np.ndarray,
                   choices: Sequence[int], budget: float) -> tuple[list[int], float]:
    """Widths minimising sum_i scores_i * perturbation[i, c] with sum_i cost[i, c] <= budget.

    ``perturbation`` and ``cost`` are [layers, len(choices)]. Returns (bits per layer, objective).
    Raises ``BudgetError`` naming the smallest achievable cost when the budget is too small.
    """
    from scipy.optimize import Bounds, LinearConstraint, milp

    scores = np.asarray(scores, dtype=np.float64)
    perturbation, cost = np.asarray(perturbation, np.float64), np.asarray(cost, np.float64)
    n, c = perturbation.shape
    if cost.shape != (n, c) or len(scores) != n or len(choices) != c:
        raise ValueError(f"shapes: scores {len(scores)}, perturbation {perturbation.shape}, "
                         f"cost {cost.shape}, choices {len(choices)}")
    smallest = float(cost.min(1).sum())
    if budget < smallest - 1e-12:
        raise BudgetError(f"size budget {budget:.4f} MiB is below the smallest allocation "
                          f"({smallest:.4f} MiB: every layer at its cheapest width)")
    # x[i*c + j] = 1 if layer i takes choice j
    objective = (np.abs(scores)[:, None] * perturbation).reshape(-1)
    one_per_layer = LinearConstraint(np.kron(np.eye(n), np.ones((1, c))), 1, 1)
    within_budget = LinearConstraint(cost.reshape(1, -1), -np.inf, budget)
    result = milp(objective, integrality=np.ones(n * c), bounds=Bounds(0, 1),
                  constraints=[one_per_layer, within_budget])
    if result.status != 0 or result.x is None:
        raise BudgetError(f"the integer program found no allocation within {budget:.4f} MiB: {result.message}")
    picks = result.x.reshape(n, c).argmax(1)
    return [int(choices[j]) for j in picks], float(result.fun)


def layer_costs(config, choices: Sequence[int], groups: Groups, **plan_kw) -> np.ndarray:
    """[layers, choices] MiB of each encoder layer at each width (paper size convention)."""
    n = config.num_hidden_layers
    out = np.zeros((n, len(choices)))
    for j, bits in enumerate(choices):
        report = size_from_config(config, layerwise_plan([bits] * n, groups=groups, **plan_kw), prefix="bert.")
        for name, module_bits in report.per_module_bits.items():
            layer = layer_index(name)
            if layer is not None:
                out[layer, j] += module_bits / MIB_BITS
    return out


def encoder_mib(config, bits_per_layer: Sequence[int], groups: Groups, **plan_kw) -> float:
    """The "Size w/o-e" of a per-layer allocation (MiB)."""
    return size_from_config(config, layerwise_plan(list(bits_per_layer), groups=groups, **plan_kw),
                            prefix="bert.").encoder_mib


@torch.no_grad()
def weight_perturbation(model: nn.Module, choices: Sequence[int], groups: Groups, **plan_kw) -> np.ndarray:
    """[layers, choices]: ||Q_b(W) - W||^2 summed over each layer's Linear weights, each quantized
    as ``layerwise_plan`` at that width would quantize it (same matching, groups, symmetry)."""
    blocks = layer_blocks(model)
    candidates = [(n, type(m).__name__, type(m) in QUANT_MODULES) for n, m in model.named_modules()]
    out = np.zeros((len(blocks), len(choices)))
    for j, bits in enumerate(choices):
        specs = assign(layerwise_plan([bits] * len(blocks), groups=groups, **plan_kw), candidates)
        for i, block in enumerate(blocks):
            for name, weight in block:
                w = weight.detach().float()
                q = weight_quantizer_for(specs[name], w.shape[0], name)(w)
                out[i, j] += float((q - w).pow(2).sum())
    return out
