"""Q8BERT: symmetric 8-bit QAT, weights by max |w|, inputs by an EMA of max |x|, optional delay."""

from qbert.methods import Method, register


def build(quant, num_heads, layer_bits):
    from qbert.quant.bert_plans import q8bert_plan
    return q8bert_plan(momentum=quant.ema_decay)


METHOD = register(Method(
    name="q8bert", family="q8bert", reads=frozenset({"ema_decay", "delay_steps"}),
    build=build, label=lambda config: "Q8BERT",
    note="Q8BERT is 8-bit, per-tensor and symmetric by definition",
))
