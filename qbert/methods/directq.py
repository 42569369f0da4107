"""Q-BERT's DirectQ baseline: uniform widths, one range per matrix."""

from qbert.methods import (INPUT_RANGES, WEIGHT_RANGES, Method, input_range_kw, input_range_label, register,
                           weight_range_kw, weight_range_label, with_suffix)


def build(quant, num_heads, layer_bits):
    from qbert.quant.bert_plans import directq_plan
    return directq_plan(quant.w_bits, quant.e_bits, quant.a_bits, symmetric=quant.symmetric, **weight_range_kw(quant),
                        **input_range_kw(quant))


METHOD = register(Method(
    name="directq", family="qbert",
    reads=frozenset({"w_bits", "e_bits", "a_bits", "symmetric"}) | WEIGHT_RANGES | INPUT_RANGES, build=build,
    label=lambda config: with_suffix("DirectQ", weight_range_label(config.get("quant") or {})
                                     + input_range_label(config.get("quant") or {})),
    note="one range per matrix: quant.groups does not apply",
))
