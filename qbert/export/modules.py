"""Inference modules of a packed model: integer weight codes + steps, no latent float weight.

They compute exactly what ``QuantLinear``/``QuantEmbedding`` compute in eval mode (same
dequantization ``(q - zero_point) * scale``, same input fake quantization), so a loaded model
reproduces the fake-quantized model's logits. In memory a weight is held as one int8 (uint8 when
asymmetric) code per element, a quarter of fp32, whatever its width on disk; ``dequantized_weight``
gives the float ``Q(W)`` the integer backends start from. No autograd, no training state.
"""

from __future__ import annotations

from typing import Any, Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from qbert.quant.primitives import FLOAT_BITS, compute_qparams, fake_quantize, qrange, range_from_tensor


def learned_fake_quantize(x: Tensor, step: Tensor, offset: Tensor, bits: int, symmetric: bool) -> Tensor:
    """A frozen learned (LSQ/LSQ+) quantizer: ``round(clamp((x - offset) / step)) * step + offset``."""
    qmin, qmax = qrange(bits, symmetric)
    return torch.round(((x - offset) / step).clamp(qmin, qmax)) * step + offset


def _dequantize(q: Tensor, scale: Tensor, zero_point: Tensor) -> Tensor:
    g = scale.numel()
    out = (q.reshape(g, -1).float() - zero_point.reshape(g, 1).float()) * scale.reshape(g, 1)
    return out.reshape(q.shape)


class PackedLinear(nn.Module):
    """``y = x_q @ dequant(W_q)^T + b`` with ``x_q`` the input quantized as in training."""

    def __init__(self, info: dict[str, Any], spec: dict[str, Any], tensors: dict[str, Tensor],
                 codes: Optional[Tensor], bias: Optional[Tensor]) -> None:
        super().__init__()
        self.out_features, self.in_features = info["shape"]
        self.w_bits, self.a_bits, self.input_kind = info["w_bits"], info["a_bits"], info["input"]
        self.input_symmetric = info.get("input_symmetric", True)
        self.range_method, self.percentile = spec.get("range", "minmax"), spec.get("percentile", 99.99)
        self.per_token = bool(spec.get("per_token", False))  # dynamic inputs: one range per token
        if codes is None:  # a float weight with a quantized input
            self.register_buffer("weight", tensors["weight"].reshape(self.out_features, self.in_features))
        else:
            self.register_buffer("qweight", codes.reshape(self.out_features, self.in_features))
            self.register_buffer("weight_scale", tensors["weight.scale"].float())
            zp = tensors.get("weight.zero_point")
            self.register_buffer("weight_zero_point", torch.zeros_like(self.weight_scale, dtype=torch.int32) if zp is None else zp)
        self.register_buffer("bias", bias)
        self.register_buffer("input_qparams", tensors.get("input.qparams"))

    def dequantized_weight(self) -> Tensor:
        if self.w_bits == FLOAT_BITS:
            return self.weight
        return _dequantize(self.qweight, self.weight_scale, self.weight_zero_point)

    def quantize_input(self, x: Tensor) -> Tensor:
        kind = self.input_kind
        if kind is None:
            return x
        if kind == "learned":  # LSQ/LSQ+
            return learned_fake_quantize(x, self.input_qparams[0], self.input_qparams[1], self.a_bits, self.input_symmetric)
        if kind == "dynamic":
            lo, hi = range_from_tensor(x, self.range_method, self.percentile, dim=-1 if self.per_token else None)
            scale, zp = compute_qparams(lo, hi, self.a_bits, self.input_symmetric)
        else:  # "ema": the range frozen after QAT / calibration
            scale, zp = self.input_qparams[0], self.input_qparams[1].to(torch.int32)
        return fake_quantize(x, scale, zp, self.a_bits, self.input_symmetric)

    def forward(self, x: Tensor) -> Tensor:
        return F.linear(self.quantize_input(x), self.dequantized_weight(), self.bias)

    def extra_repr(self) -> str:
        return (f"in={self.in_features}, out={self.out_features}, w_bits={self.w_bits}, "
                f"a_bits={self.a_bits}, input={self.input_kind}{' per token' if self.per_token else ''}")


class PackedOperand(nn.Module):
    """One attention matmul operand (Q, K, V or the softmax probabilities P) at its frozen learned
    step and offset (``learned_fake_quantize``), what the trained ``LearnedActivationQuantizer``
    computes in eval mode (``qbert.quant.attention``)."""

    def __init__(self, bits: int, symmetric: bool, qparams: Tensor) -> None:
        super().__init__()
        self.bits, self.symmetric = bits, symmetric
        self.register_buffer("qparams", qparams.float().reshape(2))  # [step, offset]

    def forward(self, x: Tensor) -> Tensor:
        return learned_fake_quantize(x, self.qparams[0], self.qparams[1], self.bits, self.symmetric)

    def extra_repr(self) -> str:
        return f"bits={self.bits}, symmetric={self.symmetric}"


class PackedEmbedding(nn.Module):
    """Looks up integer codes and dequantizes only the rows looked up (per row-group step)."""

    def __init__(self, info: dict[str, Any], tensors: dict[str, Tensor], codes: Tensor) -> None:
        super().__init__()
        self.num_embeddings, self.embedding_dim = info["shape"]
        self.padding_idx, self.w_bits = info.get("padding_idx"), info["w_bits"]
        self.register_buffer("qweight", codes.reshape(self.num_embeddings, self.embedding_dim))
        self.register_buffer("weight_scale", tensors["weight.scale"].float())
        zp = tensors.get("weight.zero_point")
        self.register_buffer("weight_zero_point", torch.zeros_like(self.weight_scale, dtype=torch.int32) if zp is None else zp)

    def dequantized_weight(self) -> Tensor:
        return _dequantize(self.qweight, self.weight_scale, self.weight_zero_point)

    def forward(self, ids: Tensor) -> Tensor:
        group = ids // (self.num_embeddings // self.weight_scale.numel())
        rows = self.qweight[ids].float()
        return (rows - self.weight_zero_point[group].unsqueeze(-1).float()) * self.weight_scale[group].unsqueeze(-1)

    def extra_repr(self) -> str:
        return f"{self.num_embeddings}, {self.embedding_dim}, w_bits={self.w_bits}, groups={self.weight_scale.numel()}"
