"""Bit packing of integer weight codes: one layout for every width 2..8 (pure functions).

**Layout (format version 1): an LSB-first bit stream.** A tensor's codes are taken in row-major
order; code ``i`` occupies bits ``[i*b, (i+1)*b)`` of the stream, least significant bit first,
and stream bit ``k`` is bit ``k % 8`` of byte ``k // 8``. The last byte is zero-padded, so a
tensor of ``n`` codes takes exactly ``ceil(n * b / 8)`` bytes. What this means per width:

* 8 bits: one code per byte (the byte *is* the code);
* 4 bits: two codes per byte, the even-indexed code in the low nibble;
* 2 bits: four codes per byte, code ``4j + t`` in bits ``2t .. 2t+1`` of byte ``j``;
* 3 bits: eight codes in three bytes. Read the three bytes as one little-endian 24-bit word
  ``w = B0 | B1 << 8 | B2 << 16``; code ``8j + t`` is ``(w >> 3t) & 7``. Codes 2 and 5 straddle
  a byte boundary (bits 6-8 and 15-17);
* 5, 6, 7 bits: the same rule (eight codes in ``b`` bytes).

**Codes are unsigned** (``0 .. 2^b - 1``). ``to_codes``/``from_codes`` map the quantizer's
integer grid onto them: an asymmetric grid is already ``[0, 2^b-1]``; a symmetric grid is
shifted by ``2^(b-1)``: the restricted ``[-(2^(b-1)-1), 2^(b-1)-1]`` never uses code 0, the full
``[-2^(b-1), 2^(b-1)-1]`` (``quant.w_grid=full``) uses all ``2^b`` codes.
"""

from __future__ import annotations

import torch
from torch import Tensor

PACK_BITS: tuple[int, ...] = tuple(range(2, 9))
LAYOUT = "lsb-first bit stream, row-major; codes = q + 2^(b-1) (symmetric) or q (asymmetric)"


def _check(bits: int) -> int:
    if isinstance(bits, bool) or not isinstance(bits, int) or bits not in PACK_BITS:
        raise ValueError(f"bits={bits!r} cannot be packed: use one of {PACK_BITS}")
    return bits


def packed_nbytes(numel: int, bits: int) -> int:
    """Bytes that ``numel`` codes of ``bits`` bits take: ``ceil(numel * bits / 8)``."""
    return (numel * _check(bits) + 7) // 8


def to_codes(q: Tensor, bits: int, symmetric: bool) -> Tensor:
    """Integer grid values -> unsigned codes (int64); ValueError if any is off the grid."""
    _check(bits)
    codes = q.to(torch.int64) + (2 ** (bits - 1) if symmetric else 0)
    if codes.numel() and (int(codes.min()) < 0 or int(codes.max()) >= 2**bits):
        raise ValueError(f"values outside the {bits}-bit {'symmetric' if symmetric else 'asymmetric'} grid")
    return codes


def from_codes(codes: Tensor, bits: int, symmetric: bool) -> Tensor:
    """Unsigned codes -> integer grid values: int8 when symmetric, uint8 when asymmetric."""
    _check(bits)
    if symmetric:
        return (codes.to(torch.int16) - 2 ** (bits - 1)).to(torch.int8)
    return codes.to(torch.uint8)


def pack(codes: Tensor, bits: int) -> Tensor:
    """Unsigned codes (any shape, any int dtype) -> 1-D uint8 of ``packed_nbytes`` bytes."""
    _check(bits)
    flat = codes.reshape(-1).to(torch.int64)
    n = flat.numel()
    if n and (int(flat.min()) < 0 or int(flat.max()) >= 2**bits):
        raise ValueError(f"codes must lie in [0, {2**bits - 1}] to pack at {bits} bits")
    if bits == 8:
        return flat.to(torch.uint8)
    # Eight codes fill exactly `bits` bytes: build each 8*bits-bit word, then cut it into bytes.
    pad = (-n) % 8
    groups = torch.cat([flat, flat.new_zeros(pad)]).reshape(-1, 8)
    shifts = torch.arange(8, dtype=torch.int64) * bits
    words = (groups << shifts).sum(dim=1, keepdim=True)  # < 2^(8*bits) <= 2^56: no overflow
    out = (words >> (torch.arange(bits, dtype=torch.int64) * 8)) & 0xFF
    return out.reshape(-1)[: packed_nbytes(n, bits)].to(torch.uint8)


def unpack(packed: Tensor, bits: int, numel: int) -> Tensor:
    """Inverse of ``pack``: the first ``numel`` codes as uint8 (1-D)."""
    _check(bits)
    if packed.dtype != torch.uint8 or packed.ndim != 1:
        raise ValueError(f"packed data must be a 1-D uint8 tensor, got {packed.dtype} {tuple(packed.shape)}")
    if packed.numel() != packed_nbytes(numel, bits):
        raise ValueError(f"{packed.numel()} packed bytes cannot hold exactly {numel} codes of "
                         f"{bits} bits (expected {packed_nbytes(numel, bits)})")
    if bits == 8:
        return packed.clone()
    pad = (-packed.numel()) % bits
    raw = torch.cat([packed, packed.new_zeros(pad)]).to(torch.int64).reshape(-1, bits)
    words = (raw << (torch.arange(bits, dtype=torch.int64) * 8)).sum(dim=1, keepdim=True)
    codes = (words >> (torch.arange(8, dtype=torch.int64) * bits)) & (2**bits - 1)
    return codes.reshape(-1)[:numel].to(torch.uint8)
