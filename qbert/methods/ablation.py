"""Q-BERT's per-module study: one module kind quantized (``quant.module``), the rest float."""

from qbert.methods import Method, register


def build(quant, num_heads, layer_bits):
    from qbert.quant.bert_plans import ablation_plan
    return ablation_plan(quant.module, quant.w_bits, groups=quant.groups, a_bits=quant.a_bits,
                         heads_as_groups=quant.heads_as_groups, num_heads=num_heads, symmetric=quant.symmetric)


METHOD = register(Method(
    name="ablation", family="qbert",
    reads=frozenset({"module", "w_bits", "a_bits", "groups", "heads_as_groups", "symmetric"}),
    build=build, label=lambda config: f"Q-BERT, {(config.get('quant') or {}).get('module')} only",
    note="the one module kind is quantized at quant.w_bits, embeddings included",
))
