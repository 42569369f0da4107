"""Q-BERT's per-module study: one module kind quantized (``quant.module``), the rest float."""

from qbert.methods import (INPUT_RANGES, WEIGHT_RANGES, Method, input_range_kw, input_range_label, register,
                           weight_range_kw, weight_range_label, with_suffix)


def build(quant, num_heads, layer_bits):
    from qbert.quant.bert_plans import ablation_plan
    return ablation_plan(quant.module, quant.w_bits, groups=quant.groups, a_bits=quant.a_bits,
                         heads_as_groups=quant.heads_as_groups, groups_per_head=quant.groups_per_head,
                         num_heads=num_heads, symmetric=quant.symmetric, **weight_range_kw(quant),
                         **input_range_kw(quant))


def label(config):
    quant = config.get("quant") or {}
    return with_suffix(f"Q-BERT, {quant.get('module')} only", weight_range_label(quant) + input_range_label(quant))


METHOD = register(Method(
    name="ablation", family="qbert",
    reads=frozenset({"module", "w_bits", "a_bits", "groups", "heads_as_groups", "groups_per_head", "symmetric"})
    | WEIGHT_RANGES | INPUT_RANGES,
    build=build, label=label,
    note="the one module kind is quantized at quant.w_bits, embeddings included",
))
