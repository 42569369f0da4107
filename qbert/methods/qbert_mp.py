"""Q-BERT MP: group-wise ranges, per-layer widths from the Hessian analysis (rule, ILP or given)."""

from qbert.methods import (INPUT_RANGES, WEIGHT_RANGES, Method, input_range_kw, input_range_label, register,
                           weight_range_kw, weight_range_label, with_suffix)


def build(quant, num_heads, layer_bits):
    from qbert.quant.bert_plans import layerwise_plan
    if not layer_bits:
        raise ValueError("quant=qbert_mp needs per-layer widths (qbert.hessian.mixed_precision)")
    return layerwise_plan(list(layer_bits), quant.e_bits, quant.a_bits, groups=quant.groups,
                          symmetric=quant.symmetric, heads_as_groups=quant.heads_as_groups,
                          groups_per_head=quant.groups_per_head, num_heads=num_heads, **weight_range_kw(quant),
                          **input_range_kw(quant))


def label(config):
    quant = config.get("quant") or {}
    allocation = quant.get("allocation", "rule")
    by_trace = (config.get("hessian") or {}).get("sensitivity") == "trace" and allocation != "manual"
    parts = (["trace"] if by_trace else []) + weight_range_label(quant) + input_range_label(quant)
    if allocation == "ilp":
        return with_suffix("Q-BERT MP ILP", parts)
    if allocation == "manual":
        return with_suffix("Q-BERT MP manual", parts)
    return with_suffix("Q-BERT MP", parts)


METHOD = register(Method(
    name="qbert_mp", family="qbert",
    reads=frozenset({"w_bits", "high_bits", "high_layers", "avg_bits", "allocation", "size_budget_mb",
                     "bit_choices", "layer_bits", "e_bits", "a_bits", "groups", "heads_as_groups",
                     "groups_per_head", "symmetric"}) | WEIGHT_RANGES | INPUT_RANGES,
    build=build, label=label,
))
