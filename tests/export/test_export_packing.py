"""Bit packing: exact round trips at every width and odd length, and the documented layouts."""

from __future__ import annotations

import pytest
import torch

from qbert.export.packing import PACK_BITS, from_codes, pack, packed_nbytes, to_codes, unpack
from qbert.quant import qrange


@pytest.mark.parametrize("bits", PACK_BITS)
@pytest.mark.parametrize("shape", [(0,), (1,), (7,), (8,), (9,), (3, 5), (13, 7), (31, 33)])
def test_round_trip_every_width_and_odd_shape(bits, shape):
    g = torch.Generator().manual_seed(bits)
    codes = torch.randint(0, 2**bits, shape, generator=g)
    packed = pack(codes, bits)
    n = codes.numel()
    assert packed.dtype == torch.uint8 and packed.numel() == packed_nbytes(n, bits) == (n * bits + 7) // 8
    assert torch.equal(unpack(packed, bits, n).reshape(shape).long(), codes)


@pytest.mark.parametrize("bits", PACK_BITS)
@pytest.mark.parametrize("symmetric", [True, False])
def test_grid_codes_round_trip(bits, symmetric):
    qmin, qmax = qrange(bits, symmetric)
    q = torch.arange(qmin, qmax + 1)
    codes = to_codes(q, bits, symmetric)
    assert int(codes.min()) >= 0 and int(codes.max()) < 2**bits
    back = from_codes(unpack(pack(codes, bits), bits, q.numel()), bits, symmetric)
    assert torch.equal(back.long(), q)


def test_documented_layouts():
    assert pack(torch.tensor([0x1, 0x2]), 4).tolist() == [0x21]  # low nibble first
    assert pack(torch.tensor([1, 2, 3, 0]), 2).tolist() == [1 | 2 << 2 | 3 << 4]
    codes = torch.tensor([1, 2, 3, 4, 5, 6, 7, 0])  # 3 bits: 8 codes in a 24-bit LE word
    b = pack(codes, 3).tolist()
    word = b[0] | b[1] << 8 | b[2] << 16
    assert len(b) == 3 and [(word >> 3 * t) & 7 for t in range(8)] == codes.tolist()
    assert pack(torch.tensor([200, 7]), 8).tolist() == [200, 7]


def test_bad_input_refused():
    with pytest.raises(ValueError, match="lie in"):
        pack(torch.tensor([4]), 2)
    with pytest.raises(ValueError, match="cannot be packed"):
        pack(torch.tensor([0]), 1)
    with pytest.raises(ValueError, match="cannot hold"):
        unpack(torch.zeros(3, dtype=torch.uint8), 4, 7)
    with pytest.raises(ValueError, match="outside"):
        to_codes(torch.tensor([8]), 4, True)
