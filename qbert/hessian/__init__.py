"""qbert.hessian: second-order sensitivity of encoder layers and mixed-precision allocation.

Flow (``quant=qbert_mp``): ``BlockHessian`` (Hessian-vector products per layer block; kept
graphs) or ``StreamedBlockHessian`` (one batch's graph at a time) -> ``PowerIteration`` /
``power_iteration`` / ``hutchinson_trace`` -> ``analyze`` (runs x layers, Omega) -> cache ->
``rule_allocation`` (Q-BERT's 2/3, 2/4 MP) or ``ilp_allocation`` (HAWQ-v3 style) -> a
``layerwise_plan`` for ``quantize_``.
"""

from qbert.hessian.allocate import (BudgetError, encoder_mib, ilp_allocation, layer_costs, rule_allocation,
                                    weight_perturbation)
from qbert.hessian.eigen import EigenEstimate, PowerIteration, TraceEstimate, hutchinson_trace, power_iteration
from qbert.hessian.hvp import BlockHessian, StreamedBlockHessian, eager_attention, layer_blocks, task_loss
from qbert.hessian.sensitivity import Sensitivity, SensitivityError, analyze, draw_run_batches

__all__ = [
    "BudgetError", "encoder_mib", "ilp_allocation", "layer_costs", "rule_allocation", "weight_perturbation",
    "EigenEstimate", "PowerIteration", "TraceEstimate", "hutchinson_trace", "power_iteration",
    "BlockHessian", "StreamedBlockHessian", "eager_attention", "layer_blocks", "task_loss",
    "Sensitivity", "SensitivityError", "analyze", "draw_run_batches",
]
