"""Per-tensor, per-channel and group-wise ranges."""

import pytest
import torch

from qbert.quant.granularity import group_qparams, group_ranges, group_view, resolve_groups
from qbert.quant.primitives import compute_qparams, fake_quantize

W = torch.tensor([[1.0, -2.0], [0.5, 0.25], [4.0, 1.0], [-1.0, 0.0]])


def test_per_tensor_exact():
    lo, hi = group_ranges(W, 1)
    assert lo.shape == hi.shape == (1, 1, 1)
    assert (lo.item(), hi.item()) == (-2.0, 4.0)
    scale, zp = group_qparams(W, 1, 8, True)
    assert scale.item() == pytest.approx(4 / 127) and zp.item() == 0


def test_groupwise_exact():
    lo, hi = group_ranges(W, 2)
    assert lo.shape == (2, 1, 1)
    assert lo.flatten().tolist() == [-2.0, -1.0] and hi.flatten().tolist() == [1.0, 4.0]
    scale, _ = group_qparams(W, 2, 8, True)
    torch.testing.assert_close(scale.flatten(), torch.tensor([2 / 127, 4 / 127]))
    scale, zp = group_qparams(W, 2, 2, False)  # asym 2-bit: 3 steps
    torch.testing.assert_close(scale.flatten(), torch.tensor([1.0, 5 / 3]))
    assert zp.flatten().tolist() == [2, 1]


def test_per_channel_exact():
    lo, hi = group_ranges(W, "channel")
    assert lo.shape == (4, 1, 1)
    assert hi.flatten().tolist() == [1.0, 0.5, 4.0, 0.0]
    scale, _ = group_qparams(W, "channel", 4, True)
    torch.testing.assert_close(scale.flatten(), torch.tensor([2.0, 0.5, 4.0, 1.0]) / 7)


def test_groups_broadcast_against_view():
    w = torch.randn(12, 5)
    scale, zp = group_qparams(w, 3, 4, True)
    v = group_view(w, 3)
    assert v.shape == (3, 4, 5) and scale.shape == (3, 1, 1)
    fq = fake_quantize(v, scale, zp, 4, True).reshape(w.shape)
    for g in range(3):  # each block of 4 rows on its own grid
        block = w[4 * g: 4 * g + 4]
        s, z = compute_qparams(block.min(), block.max(), 4, True)
        assert torch.equal(fq[4 * g: 4 * g + 4], fake_quantize(block, s, z, 4, True))


def test_groups_are_independent():
    w = torch.randn(8, 6, generator=torch.Generator().manual_seed(0))
    before, _ = group_qparams(w, 4, 4, True)
    w2 = w.clone()
    w2[2:4] *= 100.0  # only group 1 changes
    after, _ = group_qparams(w2, 4, 4, True)
    assert torch.equal(after[[0, 2, 3]], before[[0, 2, 3]])
    assert after[1].item() == pytest.approx(100 * before[1].item(), rel=1e-5)


def test_embedding_table_groups_over_rows():
    table = torch.randn(100, 32)
    lo, _ = group_ranges(table, 4)
    assert lo.shape == (4, 1, 1)
    assert lo[1].item() == table[25:50].min().item()


def test_groups_must_divide_rows():
    with pytest.raises(ValueError, match=r"bert\.x\.query: groups=128 does not divide its 32 rows"):
        resolve_groups(128, 32, "bert.x.query")
    with pytest.raises(ValueError, match="groups=3"):
        group_view(torch.zeros(8, 2), 3)
    for bad in (0, -1, "head", 2.0, True):
        with pytest.raises(ValueError):
            resolve_groups(bad, 8)
    assert resolve_groups("channel", 8) == 8
