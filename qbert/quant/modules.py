"""Fake-quantized drop-in replacements for ``nn.Linear`` and ``nn.Embedding``.

* Parameters keep their names (``weight``, ``bias``) and are the *same* ``nn.Parameter``
  objects as in the float module (``from_float`` moves them over, no copy): a float
  state_dict loads into the quantized model, optimizers built earlier keep working, and tied
  weights stay tied. The weight stays the latent fp32 weight that QAT updates; ``Q(W)`` is
  computed at every forward. Bias stays fp32.
* The only extra state is ``input_quantizer.{running_min,running_max,initialized}`` on a
  ``QuantLinear`` whose spec has ``a_bits < 32``. A float state_dict lacking them still
  loads with ``strict=True`` (the ranges are then "not observed yet").
* ``spec.learned`` (``quant=mkq``) swaps in the learned-scale quantizers of
  ``qbert.quant.learned``: the steps (and the input's offset) are then parameters,
  ``weight_quantizer.scale`` / ``input_quantizer.{scale,offset}``, initialised from the weight at
  ``from_float`` and from calibration batches for the input.
* ``fake_quant_enabled = False`` (Q8BERT's delay, ``surgery.set_fake_quant_``) makes the module
  compute in float; an EMA input quantizer still observes ranges in training meanwhile.
* ``to_float()`` returns a plain module holding the **original float weights** (so
  ``dequantize_`` exactly inverts ``quantize_``); ``to_float(bake=True)`` instead stores the
  fake-quantized weight ``Q(W)`` (what this module computes, minus activation quantization).
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from qbert.quant.granularity import resolve_groups
from qbert.quant.learned import LearnedActivationQuantizer, LearnedWeightQuantizer
from qbert.quant.plan import QuantSpec
from qbert.quant.primitives import FLOAT_BITS, fake_quantize, grid_flags
from qbert.quant.quantizers import ActivationQuantizer, WeightQuantizer


def weight_quantizer_for(spec: QuantSpec, rows: int, name: str, device=None) -> nn.Module:
    """The weight quantizer a module with ``spec`` and ``rows`` output rows uses."""
    resolve_groups(spec.groups, rows, name)  # fail at surgery time, not at the first forward
    if spec.learned is not None:
        if spec.w_bits == FLOAT_BITS:
            raise ValueError(f"{name}: a learned weight scale needs w_bits < 32")
        return LearnedWeightQuantizer(spec.w_bits, rows, spec.groups, spec.learned, name, device=device)
    symmetric, full = grid_flags(spec.weight_grid)
    return WeightQuantizer(spec.w_bits, spec.groups, symmetric, spec.weight_range, spec.percentile, name,
                           full=full, rows=rows)


def _baked(weight: nn.Parameter, quantizer: nn.Module, bake: bool) -> nn.Parameter:
    if not bake:
        return weight
    with torch.no_grad():
        return nn.Parameter(quantizer(weight).detach().clone(), requires_grad=weight.requires_grad)


class QuantLinear(nn.Linear):
    """``nn.Linear`` with fake-quantized weight and (if ``a_bits < 32``) fake-quantized input."""

    def __init__(self, in_features: int, out_features: int, bias: bool = True, *,
                 spec: QuantSpec, name: str = "QuantLinear",
                 device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> None:
        super().__init__(in_features, out_features, bias, device=device, dtype=dtype)
        self.spec = spec
        self.fake_quant_enabled = True
        # from_float builds on "meta" (no wasted init) and then moves the quantizers itself
        qdevice = None if str(device) == "meta" else device
        self.weight_quantizer = weight_quantizer_for(spec, out_features, name, qdevice)
        self.input_quantizer: Optional[nn.Module] = None
        if spec.a_bits < FLOAT_BITS and spec.learned is not None:
            self.input_quantizer = LearnedActivationQuantizer(spec.a_bits, spec.symmetric, spec.learned, qdevice,
                                                              integer_zero_point=spec.integer_zero_point)
        elif spec.a_bits < FLOAT_BITS:
            self.input_quantizer = ActivationQuantizer(
                spec.a_bits, spec.symmetric, spec.momentum, spec.range, spec.percentile,
                device=qdevice, dynamic=spec.dynamic, per_token=spec.per_token,
            )

    @classmethod
    def from_float(cls, module: nn.Linear, spec: QuantSpec, name: str = "QuantLinear") -> "QuantLinear":
        if type(module) is not nn.Linear:
            raise TypeError(f"{name}: QuantLinear.from_float needs an nn.Linear, got {type(module).__name__}")
        new = cls(module.in_features, module.out_features, module.bias is not None,
                  spec=spec, name=name, device="meta")
        new.weight, new.bias = module.weight, module.bias  # same Parameter objects
        new.weight_quantizer.to(module.weight.device)
        if isinstance(new.weight_quantizer, LearnedWeightQuantizer):
            new.weight_quantizer.init_(module.weight)
        if new.input_quantizer is not None:
            new.input_quantizer.to(module.weight.device)
        return new.train(module.training)

    def to_float(self, bake: bool = False) -> nn.Linear:
        out = nn.Linear(self.in_features, self.out_features, self.bias is not None, device="meta")
        out.weight = _baked(self.weight, self.weight_quantizer, bake)
        out.bias = self.bias
        return out.train(self.training)

    def forward(self, x: Tensor) -> Tensor:
        if not self.fake_quant_enabled:  # Q8BERT's delay: float compute, ranges still observed
            if isinstance(self.input_quantizer, ActivationQuantizer) and self.training and not self.input_quantizer.dynamic:
                self.input_quantizer.observe(x)
            return F.linear(x, self.weight, self.bias)
        if self.input_quantizer is not None:
            x = self.input_quantizer(x)
        return F.linear(x, self.weight_quantizer(self.weight), self.bias)


class QuantEmbedding(nn.Embedding):
    """``nn.Embedding`` whose table is fake-quantized with row-group ranges.

    Its input is token ids, so there is no activation quantizer: a spec with ``a_bits < 32``
    is refused rather than silently ignored.
    """

    def __init__(self, num_embeddings: int, embedding_dim: int, padding_idx: Optional[int] = None,
                 *, spec: QuantSpec, name: str = "QuantEmbedding",
                 device: torch.device | str | None = None, dtype: torch.dtype | None = None,
                 **kwargs) -> None:
        if spec.a_bits < FLOAT_BITS:
            raise ValueError(f"{name}: an Embedding's input is token ids; set a_bits=32 (got {spec.a_bits})")
        if spec.w_bits == FLOAT_BITS:
            raise ValueError(f"{name}: w_bits=32 on an Embedding quantizes nothing; use None in the plan")
        if spec.learned is not None:
            raise ValueError(f"{name}: learned scales are for Linear layers; embeddings use max-abs ranges")
        super().__init__(num_embeddings, embedding_dim, padding_idx, device=device, dtype=dtype, **kwargs)
        self.spec = spec
        self.fake_quant_enabled = True
        self.weight_quantizer = weight_quantizer_for(spec, num_embeddings, name)

    @classmethod
    def from_float(cls, module: nn.Embedding, spec: QuantSpec, name: str = "QuantEmbedding") -> "QuantEmbedding":
        if type(module) is not nn.Embedding:
            raise TypeError(f"{name}: QuantEmbedding.from_float needs an nn.Embedding, got {type(module).__name__}")
        new = cls(module.num_embeddings, module.embedding_dim, module.padding_idx, spec=spec, name=name,
                  device="meta", max_norm=module.max_norm, norm_type=module.norm_type,
                  scale_grad_by_freq=module.scale_grad_by_freq, sparse=module.sparse)
        new.weight = module.weight
        new.weight_quantizer.to(module.weight.device)  # its mse state, if any
        return new.train(module.training)

    def to_float(self, bake: bool = False) -> nn.Embedding:
        out = nn.Embedding(self.num_embeddings, self.embedding_dim, self.padding_idx, device="meta",
                           max_norm=self.max_norm, norm_type=self.norm_type,
                           scale_grad_by_freq=self.scale_grad_by_freq, sparse=self.sparse)
        out.weight = _baked(self.weight, self.weight_quantizer, bake)
        return out.train(self.training)

    def forward(self, ids: Tensor) -> Tensor:
        """Look up, then fake-quantize only the rows looked up, with their groups' ranges.

        The same values as quantizing the whole table first (ranges still come from the whole
        table), without a pass over all 30k rows of a word embedding at every step."""
        rows = F.embedding(ids, self.weight, self.padding_idx, self.max_norm, self.norm_type,
                           self.scale_grad_by_freq, self.sparse)
        if not self.fake_quant_enabled:
            return rows
        q = self.weight_quantizer
        scale, zero_point = q.qparams(self.weight)  # [G, 1, 1]
        group = ids // (self.num_embeddings // scale.shape[0])
        scale, zero_point = scale.reshape(-1)[group].unsqueeze(-1), zero_point.reshape(-1)[group].unsqueeze(-1)
        return fake_quantize(rows, scale, zero_point, q.bits, q.symmetric, q.full)


QUANT_MODULES: dict[type[nn.Module], type[nn.Module]] = {nn.Linear: QuantLinear, nn.Embedding: QuantEmbedding}
