"""Q8BERT's baseline: dynamic 8-bit post-training quantization (each input range from its batch)."""

from qbert.methods import Method, register


def build(quant, num_heads, layer_bits):
    from qbert.quant.bert_plans import q8bert_plan
    return q8bert_plan(dynamic=True)


METHOD = register(Method(
    name="q8bert_ptq", family="q8bert", reads=frozenset(), trains=False,
    build=build, label=lambda config: "Dynamic PTQ",
    note="dynamic 8-bit post-training quantization: 8-bit, per-tensor, ranges from each batch, no training",
))
