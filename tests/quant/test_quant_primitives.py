"""Pure quantization math on hand-made tensors."""

import pytest
import torch

from qbert.quant.primitives import (
    MIN_SCALE,
    check_bits,
    compute_qparams,
    dequantize,
    fake_quantize,
    qrange,
    quantize,
    range_from_tensor,
)


def test_grids():
    assert qrange(8, True) == (-127, 127)
    assert qrange(4, True) == (-7, 7)
    assert qrange(2, True) == (-1, 1)
    assert qrange(8, False) == (0, 255)
    assert qrange(2, False) == (0, 3)


@pytest.mark.parametrize("bits", [0, 1, 9, 16, 31, 33, -4, 4.0, True, "8"])
def test_bad_bits_name_the_value(bits):
    with pytest.raises(ValueError, match=repr(bits).replace("(", r"\(")):
        check_bits(bits)
    with pytest.raises(ValueError):
        fake_quantize(torch.zeros(3), torch.ones(()), torch.zeros((), dtype=torch.int32), bits, True)


def test_bits_32_is_identity_and_has_no_grid():
    x = torch.randn(5)
    assert fake_quantize(x, torch.tensor(0.1), torch.tensor(0), 32, True) is x
    with pytest.raises(ValueError, match="32"):
        qrange(32, True)


def test_symmetric_exact_values():
    x = torch.tensor([-1.0, -0.6, 0.0, 0.3, 0.7])
    scale, zp = compute_qparams(x.min(), x.max(), 4, symmetric=True)
    assert scale.item() == pytest.approx(1 / 7) and zp.item() == 0
    q = quantize(x, scale, zp, 4, True)
    assert q.dtype == torch.int32
    assert q.tolist() == [-7, -4, 0, 2, 5]
    torch.testing.assert_close(dequantize(q, scale, zp), torch.tensor([-7, -4, 0, 2, 5]) / 7.0)


def test_symmetric_uses_max_abs():
    scale, _ = compute_qparams(torch.tensor(-3.0), torch.tensor(1.0), 8, True)
    assert scale.item() == pytest.approx(3 / 127)


def test_asymmetric_exact_values():
    x = torch.tensor([-1.0, 0.0, 0.4, 1.6, 2.0])
    scale, zp = compute_qparams(x.min(), x.max(), 2, symmetric=False)
    assert scale.item() == pytest.approx(1.0) and zp.item() == 1 and zp.dtype == torch.int32
    q = quantize(x, scale, zp, 2, False)
    assert q.tolist() == [0, 1, 1, 3, 3]
    assert dequantize(q, scale, zp).tolist() == [-1.0, 0.0, 0.0, 2.0, 2.0]


def test_asymmetric_range_includes_zero():
    scale, zp = compute_qparams(torch.tensor(2.0), torch.tensor(4.0), 8, False)
    assert zp.item() == 0 and scale.item() == pytest.approx(4 / 255)
    x = torch.tensor([0.0, 3.0])
    assert fake_quantize(x, scale, zp, 8, False)[0].item() == 0.0


@pytest.mark.parametrize("symmetric", [True, False])
@pytest.mark.parametrize("bits", [2, 3, 4, 8])
def test_fake_quant_equals_dequantize_quantize(bits, symmetric):
    x = torch.randn(64, 16, generator=torch.Generator().manual_seed(bits))
    lo, hi = range_from_tensor(x, dim=1)
    scale, zp = compute_qparams(lo * 0.8, hi * 0.8, bits, symmetric)  # some values get clipped
    fq = fake_quantize(x, scale, zp, bits, symmetric)
    assert torch.equal(fq, dequantize(quantize(x, scale, zp, bits, symmetric), scale, zp))
    assert all(row.unique().numel() <= 2**bits for row in fq)  # one grid per row


@pytest.mark.parametrize("symmetric", [True, False])
def test_ste_passes_inside_and_zeros_outside(symmetric):
    scale, zp = compute_qparams(torch.tensor(-1.0), torch.tensor(1.0), 4, symmetric)
    x = torch.tensor([-3.0, -0.9, 0.0, 0.33, 0.99, 1.5, 7.0], requires_grad=True)
    fake_quantize(x, scale, zp, 4, symmetric).backward(torch.arange(1.0, 8.0))
    assert x.grad.tolist() == [0.0, 2.0, 3.0, 4.0, 5.0, 0.0, 0.0]


def test_no_gradient_to_scale():
    scale = torch.tensor(0.1, requires_grad=True)
    x = torch.randn(10, requires_grad=True)
    fake_quantize(x, scale, torch.tensor(0), 8, True).sum().backward()
    assert scale.grad is None


@pytest.mark.parametrize("symmetric", [True, False])
def test_zero_range_guard(symmetric):
    lo = torch.tensor([0.0, float("nan"), 1e-12])
    scale, zp = compute_qparams(lo, torch.tensor([0.0, float("nan"), 1e-12]), 4, symmetric)
    assert torch.all(scale >= MIN_SCALE) and not torch.isnan(scale).any()
    z = torch.zeros(3)
    assert torch.equal(fake_quantize(z, scale, zp, 4, symmetric), z)


def test_range_minmax_and_dims():
    x = torch.tensor([[1.0, -2.0, 3.0], [0.5, 0.25, -0.125]])
    lo, hi = range_from_tensor(x)
    assert (lo.item(), hi.item()) == (-2.0, 3.0) and lo.shape == ()
    lo, hi = range_from_tensor(x, dim=1)
    assert lo.shape == (2, 1) and lo.flatten().tolist() == [-2.0, -0.125]
    assert hi.flatten().tolist() == [3.0, 0.5]


def test_range_percentile():
    x = torch.arange(1.0, 1001.0)[torch.randperm(1000, generator=torch.Generator().manual_seed(0))]
    lo, hi = range_from_tensor(x, "percentile", percentile=99.0)
    assert (lo.item(), hi.item()) == (11.0, 990.0)
    assert range_from_tensor(x, "percentile", percentile=100.0) == range_from_tensor(x)
    lo, hi = range_from_tensor(x.reshape(4, 250), "percentile", 99.0, dim=1)
    assert lo.shape == hi.shape == (4, 1)
    with pytest.raises(ValueError, match="percentile"):
        range_from_tensor(x, "percentile", percentile=0.0)
    with pytest.raises(ValueError, match="'mse'"):
        range_from_tensor(x, "mse")
