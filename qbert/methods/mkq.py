"""MKQ-BERT: learned weight steps and input step + offset (LSQ/LSQ+), W4A4, distillation."""

from qbert.methods import Method, register


def build(quant, num_heads, layer_bits):
    from qbert.quant.bert_plans import mkq_plan
    return mkq_plan(quant.w_bits, quant.a_bits, quant.e_bits, groups=quant.groups, scale_grad=quant.scale_grad,
                    a_symmetric=quant.symmetric)


def label(config):
    name = "MKQ-BERT" if (config.get("distill") or {}).get("enabled") else "MKQ-BERT w/o KD"
    scale_grad = (config.get("quant") or {}).get("scale_grad", "lsq")
    return name if scale_grad == "lsq" else f"{name} ({scale_grad})"


METHOD = register(Method(
    name="mkq", family="mkq",
    reads=frozenset({"w_bits", "a_bits", "e_bits", "groups", "scale_grad", "scale_lr", "symmetric",
                     "calibration_batches"}),
    build=build, label=label,
))
