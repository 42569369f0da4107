"""qbert.quant: fake quantization of BERT-family models (pure library: no Hydra, no Lightning).

Flow: ``plan = qbert_plan(4)`` -> ``quantize_(model, plan)`` -> train (QAT) -> save
``quantization_map(model)`` with the weights -> rebuild with ``quantize_(fresh, qmap)`` +
``load_state_dict``. Sizes: ``size_from_config(config, plan)`` / ``size_from_model(model)``.
"""

from qbert.quant.bert_plans import (
    ABLATIONS,
    PLAN_BUILDERS,
    ablation_plan,
    build_plan,
    directq_plan,
    layerwise_plan,
    mkq_plan,
    q8bert_plan,
    qbert_plan,
    uniform_plan,
)
from qbert.quant.granularity import CHANNEL, group_qparams, group_ranges, group_view, resolve_groups
from qbert.quant.learned import LearnedActivationQuantizer, LearnedWeightQuantizer, lsq_fake_quantize
from qbert.quant.modules import QUANT_MODULES, QuantEmbedding, QuantLinear
from qbert.quant.plan import (
    Plan,
    QuantSpec,
    assign,
    key_matches,
    normalize_plan,
    plan_from_dict,
    plan_to_dict,
)
from qbert.quant.primitives import (
    FLOAT_BITS,
    SUPPORTED_BITS,
    check_bits,
    compute_qparams,
    dequantize,
    fake_quantize,
    qrange,
    quantize,
    range_from_tensor,
)
from qbert.quant.quantizers import ActivationQuantizer, WeightQuantizer
from qbert.quant.size import (
    BERT_BASE,
    BertDims,
    SizeReport,
    account,
    bert_slots,
    size_from_config,
    size_from_model,
)
from qbert.quant.surgery import (
    activation_quantizers,
    calibration,
    dequantize_,
    learned_quantizers,
    needs_calibration,
    quantization_map,
    quantize_,
    set_fake_quant_,
)

__all__ = [
    "ABLATIONS", "PLAN_BUILDERS", "ablation_plan", "build_plan", "directq_plan", "layerwise_plan",
    "mkq_plan", "q8bert_plan", "qbert_plan", "uniform_plan",
    "LearnedActivationQuantizer", "LearnedWeightQuantizer", "lsq_fake_quantize",
    "CHANNEL", "group_qparams", "group_ranges", "group_view", "resolve_groups",
    "QUANT_MODULES", "QuantEmbedding", "QuantLinear",
    "Plan", "QuantSpec", "assign", "key_matches", "normalize_plan", "plan_from_dict", "plan_to_dict",
    "FLOAT_BITS", "SUPPORTED_BITS", "check_bits", "compute_qparams", "dequantize", "fake_quantize",
    "qrange", "quantize", "range_from_tensor",
    "ActivationQuantizer", "WeightQuantizer",
    "BERT_BASE", "BertDims", "SizeReport", "account", "bert_slots", "size_from_config", "size_from_model",
    "activation_quantizers", "calibration", "dequantize_", "learned_quantizers", "needs_calibration",
    "quantization_map", "quantize_", "set_fake_quant_",
]
