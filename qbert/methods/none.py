"""Full precision: no plan (the baseline every quantized row is compared with)."""

from qbert.methods import Method, register

METHOD = register(Method(
    name="none", family="qbert", reads=frozenset(), trains=True, has_qat_stage=False,
    build=lambda quant, num_heads, layer_bits: None,
    label=lambda config: "Baseline",
    note="full precision quantizes nothing; it trains with optim.*",
))
