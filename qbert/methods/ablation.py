"""Q-BERT's per-module study: one module kind quantized (``quant.module``), the rest float."""

from qbert.methods import WEIGHT_RANGES, Method, register, weight_range_kw, weight_range_label, with_suffix


def build(quant, num_heads, layer_bits):
    from qbert.quant.bert_plans import ablation_plan
    return ablation_plan(quant.module, quant.w_bits, groups=quant.groups, a_bits=quant.a_bits,
                         heads_as_groups=quant.heads_as_groups, num_heads=num_heads, symmetric=quant.symmetric,
                         **weight_range_kw(quant))


def label(config):
    quant = config.get("quant") or {}
    return with_suffix(f"Q-BERT, {quant.get('module')} only", weight_range_label(quant))


METHOD = register(Method(
    name="ablation", family="qbert",
    reads=frozenset({"module", "w_bits", "a_bits", "groups", "heads_as_groups", "symmetric"}) | WEIGHT_RANGES,
    build=build, label=label,
    note="the one module kind is quantized at quant.w_bits, embeddings included",
))
