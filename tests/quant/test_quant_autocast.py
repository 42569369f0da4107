"""bf16 autocast (CPU) leaves fake quantization exact: the same grid values, in float32, and the
same straight-through gradient mask as without autocast."""

import pytest
import torch
from torch import nn

from qbert.quant.modules import QuantEmbedding, QuantLinear
from qbert.quant.plan import QuantSpec
from qbert.quant.quantizers import ActivationQuantizer, WeightQuantizer


def _autocast():
    return torch.autocast("cpu", dtype=torch.bfloat16)


@pytest.mark.parametrize("bits,groups,symmetric", [(8, 1, True), (4, 16, True), (3, 128, True), (2, 128, True),
                                                   (4, 16, False)])
def test_weight_grid_is_the_same_under_autocast(bits, groups, symmetric):
    torch.manual_seed(bits)
    w = torch.randn(384, 96, requires_grad=True)
    q = WeightQuantizer(bits, groups, symmetric)
    plain = q(w)
    with _autocast():
        mixed = q(w)
    assert mixed.dtype == torch.float32
    assert torch.equal(mixed, plain)
    grad = torch.randn_like(w)
    (g_plain,) = torch.autograd.grad(plain, w, grad)
    (g_mixed,) = torch.autograd.grad(mixed, w, grad)
    assert torch.equal(g_mixed, g_plain)  # the same clipping mask


def test_activation_grid_is_exact_float32_under_autocast():
    """A bf16 activation is quantized in float32 and stays float32: no bf16 rounding of the grid."""
    torch.manual_seed(0)
    x = (torch.randn(4, 7, 64) * 3).to(torch.bfloat16).requires_grad_()
    q = ActivationQuantizer(8, symmetric=True).train()
    with _autocast():
        mixed = q(x)
    q.eval()
    plain = q(x.float())  # the same range (frozen now), the same input values in float32
    assert mixed.dtype == torch.float32
    assert torch.equal(mixed, plain)
    levels = mixed / (q.running_max / 127)
    assert torch.allclose(levels, levels.round(), atol=1e-4)  # on the integer grid


def test_quant_linear_under_autocast_runs_the_matmul_in_bf16_on_grid_values():
    torch.manual_seed(0)
    lin = QuantLinear.from_float(nn.Linear(64, 32), QuantSpec(w_bits=4, groups=8, a_bits=8), name="fc").train()
    x = torch.randn(5, 64)
    with _autocast():
        out = lin(x)
    assert out.dtype == torch.bfloat16  # autocast chose bf16 for the matmul
    # the matmul saw exactly the fake-quantized operands, rounded once to bf16 by autocast
    lin.eval()
    xq = lin.input_quantizer(x)
    wq = lin.weight_quantizer(lin.weight)
    expected = torch.nn.functional.linear(xq.bfloat16(), wq.bfloat16(), lin.bias.bfloat16())
    with _autocast():
        again = lin(x)
    assert torch.equal(again, expected)


def test_embedding_rows_are_the_same_under_autocast():
    emb = QuantEmbedding.from_float(nn.Embedding(256, 32), QuantSpec(w_bits=8, groups=8, a_bits=32), name="emb")
    ids = torch.randint(0, 256, (3, 9))
    plain = emb(ids)
    with _autocast():
        mixed = emb(ids)
    assert torch.equal(mixed, plain)
