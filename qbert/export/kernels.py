"""Integer Linear modules on PyTorch's own kernels (CPU and CUDA), built from ``PackedLinear``:

* ``Int8Linear`` (W8A8): ``torch._int_mm`` (cuBLAS int8 GEMM on CUDA, oneDNN/ATen on CPU) on
  the exported int8 weight codes and the input quantized with the QAT step (symmetric 8-bit
  EMA range, as Q8BERT trains). int32 accumulation, ``* (s_x * s_w) + bias`` epilogue. The
  weight is kept ``[out, in]`` row-major and passed transposed, i.e. column-major, the layout
  cuBLAS's int8 path is fast with.
* ``Int4WeightLinear`` (weight-only, 2..4-bit symmetric weights): the tinygemm kernels
  ``torch._weight_int4pack_mm`` (CUDA, bf16 activations) / ``_weight_int4pack_mm_for_cpu``;
  the kernel dequantizes ``(code - 8) * scale + zero`` per K-group inside the GEMM. A Q-BERT
  row-group step is one step per output row, so every K-group of a row gets that step and
  ``zero = 0``: the kernel computes exactly ``Q(W)``. 2- and 3-bit codes sit in 4-bit slots
  (no maintained 2/3-bit kernel; memory on the device is then 4 bits/weight). Activations stay
  float: the input fake quantization of the QAT model (``a_bits``) is *not* applied.

``convert_(model, "int8" | "int4")`` swaps the eligible ``PackedLinear`` modules in place and
returns their names; others are left as they are.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from qbert.export.modules import PackedLinear
from qbert.weights import replace_module

TINYGEMM_GROUP_SIZES = (256, 128, 64, 32)


def int8_eligible(m: PackedLinear) -> bool:
    return (m.w_bits == 8 and m.input_kind == "ema" and m.a_bits == 8 and m.input_symmetric
            and not bool(m.weight_zero_point.any()) and m.in_features % 8 == 0 and m.out_features % 8 == 0)


def int4_eligible(m: PackedLinear) -> bool:
    return (m.w_bits <= 4 and not bool(m.weight_zero_point.any()) and m.out_features % 8 == 0
            and any(m.in_features % g == 0 for g in TINYGEMM_GROUP_SIZES) and m.in_features % 64 == 0)


class Int8Linear(nn.Module):
    """W8A8 Linear on ``torch._int_mm`` (see module docstring)."""

    def __init__(self, m: PackedLinear) -> None:
        super().__init__()
        if not int8_eligible(m):
            raise ValueError(f"Int8Linear needs an 8-bit symmetric per-group weight and a symmetric 8-bit EMA input: {m}")
        self.in_features, self.out_features = m.in_features, m.out_features
        rows_per_group = m.out_features // m.weight_scale.numel()
        self.register_buffer("weight", m.qweight.to(torch.int8).contiguous())  # [out, in]
        self.register_buffer("weight_scale", m.weight_scale.repeat_interleave(rows_per_group).float())  # [out]
        self.register_buffer("input_scale", m.input_qparams[0].float().reshape(()))
        self.register_buffer("bias", None if m.bias is None else m.bias.float())

    def forward(self, x: Tensor) -> Tensor:
        shape = x.shape
        x2 = x.reshape(-1, self.in_features)
        xq = torch.round(x2.float() * (1.0 / self.input_scale)).clamp(-127, 127).to(torch.int8)
        rows = xq.shape[0]
        if rows <= 16:  # _int_mm needs more than 16 rows
            xq = F.pad(xq, (0, 0, 0, 17 - rows))
        acc = torch._int_mm(xq, self.weight.t())[:rows]
        y = acc.float() * (self.input_scale * self.weight_scale)
        if self.bias is not None:
            y = y + self.bias
        return y.to(x.dtype).reshape(*shape[:-1], self.out_features)


class Int4WeightLinear(nn.Module):
    """Weight-only 2..4-bit Linear on the tinygemm int4 kernels (see module docstring)."""

    def __init__(self, m: PackedLinear, device: torch.device | str = "cpu", inner_k_tiles: int = 8) -> None:
        super().__init__()
        if not int4_eligible(m):
            raise ValueError(f"Int4WeightLinear needs a symmetric <=4-bit weight with in % 64 == 0, out % 8 == 0: {m}")
        self.in_features, self.out_features = m.in_features, m.out_features
        self.group_size = next(g for g in TINYGEMM_GROUP_SIZES if m.in_features % g == 0)
        self.cuda = torch.device(device).type == "cuda"
        codes = (m.qweight.to(torch.int32) + 8).to(torch.device(device))  # [out, in], in [1, 15]
        if self.cuda:
            u8 = (codes[:, ::2] << 4 | codes[:, 1::2]).to(torch.uint8)
            packed = torch._convert_weight_to_int4pack(u8, inner_k_tiles)
            dtype = torch.bfloat16
        else:
            packed = torch._convert_weight_to_int4pack_for_cpu(codes, 1)
            dtype = torch.float32
        rows_per_group = m.out_features // m.weight_scale.numel()
        scale = m.weight_scale.repeat_interleave(rows_per_group).to(device)
        sz = torch.zeros(m.in_features // self.group_size, m.out_features, 2, device=device)
        sz[..., 0] = scale
        self.register_buffer("packed", packed)
        self.register_buffer("scales_and_zeros", sz.to(dtype).contiguous())
        self.register_buffer("bias", None if m.bias is None else m.bias.to(device=device, dtype=dtype))

    def forward(self, x: Tensor) -> Tensor:
        shape = x.shape
        x2 = x.reshape(-1, self.in_features).to(self.scales_and_zeros.dtype)
        if self.cuda:
            y = torch._weight_int4pack_mm(x2, self.packed, self.group_size, self.scales_and_zeros)
        else:
            y = torch._weight_int4pack_mm_for_cpu(x2, self.packed, self.group_size, self.scales_and_zeros)
        if self.bias is not None:
            y = y + self.bias
        return y.to(x.dtype).reshape(*shape[:-1], self.out_features)


def convert_(model: nn.Module, mode: str, device: torch.device | str = "cpu") -> list[str]:
    """Swap eligible ``PackedLinear`` modules for ``Int8Linear`` (``mode="int8"``) or
    ``Int4WeightLinear`` (``"int4"``); returns the swapped names."""
    if mode not in ("int8", "int4"):
        raise ValueError(f"mode={mode!r}, expected 'int8' or 'int4'")
    done = []
    for name, m in list(model.named_modules()):
        if not isinstance(m, PackedLinear) or m.w_bits == 32:
            continue
        if mode == "int8" and int8_eligible(m):
            new: nn.Module = Int8Linear(m)
        elif mode == "int4" and int4_eligible(m):
            new = Int4WeightLinear(m, device)
        else:
            continue
        replace_module(model, name, new)
        done.append(name)
    return done


def to_device_(model: nn.Module, device: torch.device | str, dtype: torch.dtype) -> nn.Module:
    """Move a converted model to ``device``; float parameters and buffers outside the integer
    modules to ``dtype`` (their own scales stay fp32). Packed embeddings become plain float
    tables (dequantized ``Q(E)``): a lookup has no integer kernel to gain from."""
    from qbert.export.modules import PackedEmbedding

    for name, m in list(model.named_modules()):
        if isinstance(m, PackedEmbedding):
            new = nn.Embedding.from_pretrained(m.dequantized_weight(), freeze=True, padding_idx=m.padding_idx)
            replace_module(model, name, new)
    model.to(device)
    for m in model.modules():
        if isinstance(m, (Int8Linear, Int4WeightLinear, PackedLinear)):
            continue
        for key, p in list(m._parameters.items()):
            if p is not None and p.is_floating_point():
                m._parameters[key] = nn.Parameter(p.data.to(dtype), requires_grad=False)
        for key, b in list(m._buffers.items()):
            if b is not None and b.is_floating_point():
                m._buffers[key] = b.to(dtype)
    return model.eval()
