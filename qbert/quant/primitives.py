"""Pure quantization math: ranges -> (scale, zero_point) -> int grid -> float.

Conventions (shared by every quantizer in qbert):

* ``bits`` is 2..8 for a quantized tensor; 32 means "off" (float, identity). Anything else
  raises ``ValueError`` naming the value.
* **Symmetric**: signed *restricted* grid ``[-(2^(b-1)-1), 2^(b-1)-1]`` (e.g. [-7, 7] at 4 bits),
  ``zero_point = 0``, ``scale = max|x| / (2^(b-1)-1)``. The restricted grid keeps +a and -a
  both representable (Q8BERT's ``scale = 127 / max|x|``).
* **Asymmetric**: unsigned grid ``[0, 2^b-1]``, integer ``zero_point``. The range is widened to
  contain 0 so that 0 (padding rows, zeros after GELU) is exact.
* Rounding is ``torch.round`` (half to even), the same in ``quantize`` and ``fake_quantize``,
  so ``fake_quantize(x) == dequantize(quantize(x))`` bit for bit. The arithmetic is float32
  whatever the input's dtype, also under bf16 autocast.
* Zero-width ranges (an all-zero group) would give ``scale = 0``; scales are floored at
  ``MIN_SCALE`` and NaN bounds read as 0, so a scale is never 0 or NaN.

Straight-through estimator (STE) of ``fake_quantize``: the gradient w.r.t. ``x`` is 1 where
``x`` is *not clipped* (``round(x/scale) + zero_point`` lies on the grid, i.e. inside the
representable range up to half a step) and 0 where it is clipped. This is PyTorch's own
``fake_quantize_per_*_affine`` convention and Q8BERT's STE. ``scale``/``zero_point`` get no
gradient: they are range *statistics* (min/max, EMA), not learned parameters.
"""

from __future__ import annotations

import math
from typing import Literal, Sequence

import torch
from torch import Tensor

FLOAT_BITS = 32
QUANT_BITS: tuple[int, ...] = tuple(range(2, 9))
SUPPORTED_BITS: tuple[int, ...] = (*QUANT_BITS, FLOAT_BITS)
MIN_SCALE = 1e-8  # floor for scales; a range narrower than ~1e-8 is treated as that wide

RangeMethod = Literal["minmax", "percentile"]
RANGE_METHODS: tuple[str, ...] = ("minmax", "percentile")


def check_bits(bits: int, what: str = "bits") -> int:
    """Return ``bits`` if supported (2..8, or 32 = off), else raise ValueError naming it."""
    if isinstance(bits, bool) or not isinstance(bits, int) or bits not in SUPPORTED_BITS:
        raise ValueError(f"{what}={bits!r} is not supported: use 2..8, or 32 for float (off)")
    return bits


def _check_quant_bits(bits: int) -> int:
    check_bits(bits)
    if bits == FLOAT_BITS:
        raise ValueError("bits=32 means float (no quantization); there is no integer grid")
    return bits


def qrange(bits: int, symmetric: bool) -> tuple[int, int]:
    """Integer grid ``(qmin, qmax)`` for ``bits`` (see module docstring)."""
    _check_quant_bits(bits)
    if symmetric:
        qmax = 2 ** (bits - 1) - 1
        return -qmax, qmax
    return 0, 2**bits - 1


def compute_qparams(
    x_min: Tensor | float, x_max: Tensor | float, bits: int, symmetric: bool
) -> tuple[Tensor, Tensor]:
    """Map a range (broadcastable tensors or floats) to ``(scale float32, zero_point int32)``."""
    qmin, qmax = qrange(bits, symmetric)
    # NaN bounds (an all-NaN group) are read as 0 so no NaN reaches scale or zero_point.
    lo = torch.as_tensor(x_min, dtype=torch.float32).nan_to_num(0.0)
    hi = torch.as_tensor(x_max, dtype=torch.float32, device=lo.device).nan_to_num(0.0)
    if symmetric:
        scale = torch.maximum(lo.abs(), hi.abs()) / qmax
    else:
        lo, hi = lo.clamp(max=0.0), hi.clamp(min=0.0)  # 0 must be representable
        scale = (hi - lo) / (qmax - qmin)
    # `scale > MIN_SCALE` is False for 0 and NaN alike, so both get the floor.
    scale = torch.where(scale > MIN_SCALE, scale, torch.full_like(scale, MIN_SCALE))
    if symmetric:
        zero_point = torch.zeros_like(scale, dtype=torch.int32)
    else:
        zero_point = (qmin - torch.round(lo / scale)).clamp(qmin, qmax).to(torch.int32)
    return scale, zero_point


def _grid(x: Tensor, scale: Tensor, zero_point: Tensor) -> Tensor:
    """Unclamped grid coordinate ``round(x * (1 / scale)) + zero_point`` (float).

    Multiplying by the reciprocal, as PyTorch's fused fake-quant kernels do, keeps ties on the
    same side in both paths, so fake_quantize == dequantize(quantize(...)) exactly."""
    return torch.round(x * (1.0 / scale)) + zero_point.to(scale.dtype)


def quantize(x: Tensor, scale: Tensor, zero_point: Tensor, bits: int, symmetric: bool) -> Tensor:
    """Float -> int32 grid values, clamped to the representable range."""
    qmin, qmax = qrange(bits, symmetric)
    return _grid(x, scale, zero_point).clamp(qmin, qmax).to(torch.int32)


def dequantize(q: Tensor, scale: Tensor, zero_point: Tensor) -> Tensor:
    """Int grid values -> float: ``(q - zero_point) * scale``."""
    return (q.to(scale.dtype) - zero_point.to(scale.dtype)) * scale


class _FakeQuantSTE(torch.autograd.Function):
    """Forward: dequantize(quantize(x)). Backward: pass the gradient where x was not clipped.

    Written as a few in-place passes over ``x`` (multiply, round, clamp, compare, scale): on the
    CPU this is ~3x faster than PyTorch's fused ``fake_quantize_per_*_affine`` kernels for the
    shapes of a BERT layer, with the same arithmetic (reciprocal scale, round half to even)."""

    @staticmethod
    def forward(ctx, x: Tensor, scale: Tensor, zero_point: Tensor, qmin: int, qmax: int, shifted: bool) -> Tensor:
        grid = torch.round(x * (1.0 / scale))
        if shifted:  # asymmetric: a zero point (symmetric grids have none)
            grid.add_(zero_point.to(scale.dtype))
        out = grid.clamp(qmin, qmax)
        ctx.save_for_backward(out == grid)  # inside the representable range
        if shifted:
            out.sub_(zero_point.to(scale.dtype))
        return out.mul_(scale)

    @staticmethod
    def backward(ctx, grad: Tensor):
        (inside,) = ctx.saved_tensors
        return torch.where(inside, grad, 0.0), None, None, None, None, None


def fake_quantize(
    x: Tensor, scale: Tensor, zero_point: Tensor, bits: int, symmetric: bool
) -> Tensor:
    """Quantize-dequantize in float32 with an STE backward; ``bits=32`` is the identity.

    The grid arithmetic is float32 whatever the input's dtype. Under autocast the result stays
    float32 (the exact grid values; the next matmul casts as autocast decides); otherwise it
    comes back in the input's dtype."""
    if check_bits(bits) == FLOAT_BITS:
        return x
    qmin, qmax = qrange(bits, symmetric)
    scale, zero_point = scale.detach().float(), zero_point.detach().to(torch.int32)
    out = _FakeQuantSTE.apply(x.float(), scale, zero_point, qmin, qmax, not symmetric)
    return out if torch.is_autocast_enabled(x.device.type) else out.to(x.dtype)


def _reduce_dims(ndim: int, dim: int | Sequence[int] | None) -> list[int]:
    if dim is None:
        return list(range(ndim))
    dims = [dim] if isinstance(dim, int) else list(dim)
    return sorted({d % ndim for d in dims}) if ndim else []


def range_from_tensor(
    x: Tensor,
    method: RangeMethod = "minmax",
    percentile: float = 99.99,
    dim: int | Sequence[int] | None = None,
) -> tuple[Tensor, Tensor]:
    """Range ``(lo, hi)`` of ``x`` reduced over ``dim`` (all dims if None; kept as size 1).

    ``percentile``: ``hi`` is the ``percentile``-th and ``lo`` the ``(100 - percentile)``-th
    percentile (nearest rank, via ``kthvalue``: ``torch.quantile`` refuses > 2^24 elements,
    fewer than a BERT word-embedding table has). With ``dim=None`` the results are 0-d.
    """
    x = x.detach()
    dims = _reduce_dims(x.ndim, dim)
    keep_shape = [1 if d in dims else s for d, s in enumerate(x.shape)]
    if method == "minmax":  # one pass with aminmax: ranges are taken at every training step
        if dim is None:
            return torch.aminmax(x)
        kept = [d for d in range(x.ndim) if d not in dims]
        flat = x.permute(*kept, *dims).reshape(*[x.shape[d] for d in kept], -1)
        # amin + amax: two passes, yet ~4x faster than aminmax along a dimension on the CPU
        return flat.amin(-1).reshape(keep_shape), flat.amax(-1).reshape(keep_shape)
    if method != "percentile":
        raise ValueError(f"range method={method!r} is not supported: use one of {RANGE_METHODS}")
    if not 0.0 < percentile <= 100.0:
        raise ValueError(f"percentile={percentile!r} must be in (0, 100]")
    kept = [d for d in range(x.ndim) if d not in dims]
    flat = x.permute(*kept, *dims).reshape(math.prod(x.shape[d] for d in kept), -1).float()
    n = flat.shape[1]
    k_hi = min(max(math.ceil(percentile / 100.0 * n), 1), n)
    lo = flat.kthvalue(n - k_hi + 1, dim=1).values.to(x.dtype)
    hi = flat.kthvalue(k_hi, dim=1).values.to(x.dtype)
    if dim is None:
        return lo.reshape(()), hi.reshape(())
    return lo.reshape(keep_shape), hi.reshape(keep_shape)
