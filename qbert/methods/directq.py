"""Q-BERT's DirectQ baseline: uniform widths, one range per matrix."""

from qbert.methods import Method, register


def build(quant, num_heads, layer_bits):
    from qbert.quant.bert_plans import directq_plan
    return directq_plan(quant.w_bits, quant.e_bits, quant.a_bits, symmetric=quant.symmetric)


METHOD = register(Method(
    name="directq", family="qbert", reads=frozenset({"w_bits", "e_bits", "a_bits", "symmetric"}),
    build=build, label=lambda config: "DirectQ",
    note="one range per matrix: quant.groups does not apply",
))
