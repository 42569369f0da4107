"""How much each input site loses to activation quantization: ``||Q(x) - x|| / ||x||``.

Measured on a quantized model's own forward: every ``QuantLinear`` input quantizer is hooked,
and its input ``x`` and output ``Q(x)`` are compared on the real tokens of each batch (padding
positions, ``attention_mask == 0``, left out). The errors of all layers' Linears of one site
(``qbert.quant.input_ranges.SITES``) are pooled: ``sqrt(sum ||Q(x) - x||^2 / sum ||x||^2)``.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Iterable, Mapping

import torch
from torch import Tensor, nn

from qbert.quant.input_ranges import site_of
from qbert.quant.modules import QuantLinear


@torch.no_grad()
def input_errors(model: nn.Module, batches: Iterable[Mapping[str, Tensor]]) -> dict[str, float]:
    """``{site: relative error}`` of the quantized inputs over ``batches`` (model in eval mode,
    its EMA ranges observed already)."""
    squared: dict[str, list[float]] = defaultdict(lambda: [0.0, 0.0])
    mask: dict[str, Tensor] = {}

    def hook(site: str):
        def record(module: nn.Module, args: tuple, out: Tensor) -> None:
            x = args[0]
            keep = mask["tokens"].bool() if x.ndim == 3 else torch.ones(x.shape[:-1], dtype=torch.bool)
            squared[site][0] += float((out - x)[keep].float().square().sum())
            squared[site][1] += float(x[keep].float().square().sum())
        return record

    handles = [m.input_quantizer.register_forward_hook(hook(site_of(name)))
               for name, m in model.named_modules()
               if isinstance(m, QuantLinear) and m.input_quantizer is not None and site_of(name)]
    if not handles:
        raise ValueError("the model has no quantized encoder Linear input to measure")
    try:
        for batch in batches:
            mask["tokens"] = batch["attention_mask"]
            model(**batch)
    finally:
        for h in handles:
            h.remove()
    return {site: (err / max(norm, 1e-30)) ** 0.5 for site, (err, norm) in sorted(squared.items())}
