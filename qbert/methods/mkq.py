"""MKQ-BERT: learned weight steps and input step + offset (LSQ/LSQ+), W4A4, distillation."""

from qbert.methods import Method, normalized_distillation, register, with_suffix


def build(quant, num_heads, layer_bits):
    from qbert.quant.bert_plans import mkq_plan
    return mkq_plan(quant.w_bits, quant.a_bits, quant.e_bits, groups=quant.groups, scale_grad=quant.scale_grad,
                    a_symmetric=quant.symmetric, attention_operands=quant.attention_operands,
                    integer_zero_points=quant.integer_zero_points)


def label(config):
    name = "MKQ-BERT" if (config.get("distill") or {}).get("enabled") else "MKQ-BERT w/o KD"
    quant = config.get("quant") or {}
    scale_grad = quant.get("scale_grad", "lsq")
    parts = [scale_grad] if scale_grad != "lsq" else []
    if normalized_distillation(config):
        parts.append("normalized KD")
    if quant.get("attention_operands"):
        parts.append("attention matmuls quantized")
    if quant.get("integer_zero_points"):
        parts.append("integer zero points")
    return with_suffix(name, parts)


METHOD = register(Method(
    name="mkq", family="mkq",
    reads=frozenset({"w_bits", "a_bits", "e_bits", "groups", "scale_grad", "scale_lr", "symmetric",
                     "calibration_batches", "attention_operands", "integer_zero_points"}),
    build=build, label=label, distills=True,
))
