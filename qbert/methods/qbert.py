"""Q-BERT: uniform widths, group-wise ranges (``quant.groups`` row groups per matrix)."""

from qbert.methods import (INPUT_RANGES, WEIGHT_RANGES, Method, input_range_kw, input_range_label, register,
                           weight_range_kw, weight_range_label, with_suffix)


def build(quant, num_heads, layer_bits):
    from qbert.quant.bert_plans import qbert_plan
    return qbert_plan(quant.w_bits, quant.e_bits, quant.a_bits, groups=quant.groups, symmetric=quant.symmetric,
                      heads_as_groups=quant.heads_as_groups, groups_per_head=quant.groups_per_head,
                      num_heads=num_heads, **weight_range_kw(quant), **input_range_kw(quant))


METHOD = register(Method(
    name="qbert", family="qbert",
    reads=frozenset({"w_bits", "e_bits", "a_bits", "groups", "heads_as_groups", "groups_per_head", "symmetric"})
    | WEIGHT_RANGES | INPUT_RANGES,
    build=build, label=lambda config: with_suffix("Q-BERT", weight_range_label(config.get("quant") or {})
                                                  + input_range_label(config.get("quant") or {})),
))
