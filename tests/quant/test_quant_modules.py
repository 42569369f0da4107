"""QuantLinear / QuantEmbedding: drop-in, same parameters, exact forward, exact inverse."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from qbert.quant.granularity import group_qparams
from qbert.quant.modules import QuantEmbedding, QuantLinear
from qbert.quant.plan import QuantSpec
from qbert.quant.primitives import compute_qparams, fake_quantize


def _fq_weight(w, bits, groups):
    s, z = group_qparams(w, groups, bits, True)
    return fake_quantize(w.reshape(s.shape[0], -1, w.shape[1]), s, z, bits, True).reshape(w.shape)


def test_quant_linear_forward_is_exact():
    torch.manual_seed(0)
    lin = nn.Linear(6, 8)
    q = QuantLinear.from_float(lin, QuantSpec(w_bits=4, groups=2, a_bits=8), name="fc").train()
    assert q.weight is lin.weight and q.bias is lin.bias
    x = torch.randn(5, 6)
    out = q(x)
    s, z = compute_qparams(x.min(), x.max(), 8, True)
    expected = F.linear(fake_quantize(x, s, z, 8, True), _fq_weight(lin.weight, 4, 2), lin.bias)
    assert torch.equal(out, expected)


def test_quant_linear_without_activation_quant_has_no_extra_state():
    lin = nn.Linear(4, 4)
    q = QuantLinear.from_float(lin, QuantSpec(w_bits=8))
    assert q.input_quantizer is None
    assert set(q.state_dict()) == {"weight", "bias"}
    q.eval()(torch.randn(2, 4))  # no activation range needed


def test_float_state_dict_loads_strict():
    lin = nn.Linear(4, 8)
    q = QuantLinear.from_float(nn.Linear(4, 8), QuantSpec(w_bits=4, groups=4, a_bits=8))
    assert set(q.state_dict()) == {"weight", "bias", "input_quantizer.running_min",
                                   "input_quantizer.running_max", "input_quantizer.initialized"}
    q.load_state_dict(lin.state_dict(), strict=True)
    assert torch.equal(q.weight, lin.weight)


def test_to_float_original_and_baked():
    lin = nn.Linear(4, 8)
    q = QuantLinear.from_float(lin, QuantSpec(w_bits=3, groups=4))
    back = q.to_float()
    assert type(back) is nn.Linear and back.weight is lin.weight and back.bias is lin.bias
    baked = q.to_float(bake=True)
    assert type(baked) is nn.Linear and torch.equal(baked.weight, _fq_weight(lin.weight, 3, 4))
    x = torch.randn(3, 4)
    assert torch.equal(baked(x), q(x))


def test_quant_linear_groups_error_names_module():
    with pytest.raises(ValueError, match=r"enc\.ffn: groups=3 does not divide its 8 rows"):
        QuantLinear.from_float(nn.Linear(4, 8), QuantSpec(w_bits=4, groups=3), name="enc.ffn")


def test_quant_linear_refuses_subclasses():
    class Odd(nn.Linear):
        pass

    with pytest.raises(TypeError, match="Odd"):
        QuantLinear.from_float(Odd(2, 2), QuantSpec())


def test_quant_embedding():
    torch.manual_seed(0)
    emb = nn.Embedding(12, 4, padding_idx=0)
    q = QuantEmbedding.from_float(emb, QuantSpec(w_bits=4, groups=3))
    assert q.weight is emb.weight and q.padding_idx == 0
    ids = torch.tensor([[0, 3, 11]])
    assert torch.equal(q(ids), _fq_weight(emb.weight, 4, 3)[ids])
    assert q(ids)[0, 0].abs().sum() == 0  # padding row stays exactly 0
    back = q.to_float()
    assert type(back) is nn.Embedding and back.weight is emb.weight and back.padding_idx == 0
    with pytest.raises(ValueError, match="a_bits=32"):
        QuantEmbedding.from_float(emb, QuantSpec(w_bits=8, a_bits=8))


@pytest.mark.parametrize("groups,symmetric", [(1, True), (1, False), (4, True), (4, False)])
def test_embedding_lookup_then_quantize_equals_quantizing_the_table(groups, symmetric):
    """The fast path (quantize looked-up rows only) gives the values and gradients of the slow one."""
    torch.manual_seed(0)
    emb = nn.Embedding(40, 6)
    spec = QuantSpec(w_bits=3, groups=groups, a_bits=32, symmetric=symmetric)
    fast = QuantEmbedding.from_float(emb, spec)
    ids = torch.tensor([[0, 5, 39, 5], [12, 13, 20, 31]])
    out = fast(ids)
    table = fast.weight_quantizer(fast.weight)  # the whole table, quantized the straightforward way
    assert torch.equal(out, F.embedding(ids, table))
    out.pow(2).sum().backward()
    fast_grad = fast.weight.grad.clone()
    fast.weight.grad = None
    F.embedding(ids, fast.weight_quantizer(fast.weight)).pow(2).sum().backward()
    assert torch.allclose(fast_grad, fast.weight.grad)


@pytest.mark.parametrize("bits,symmetric", [(2, True), (4, False), (8, True)])
def test_fused_and_generic_fake_quant_paths_agree(bits, symmetric):
    """Per-tensor and per-group scales take PyTorch's fused kernels; an odd broadcast the generic
    autograd function: all three give the same values and the same STE gradient."""
    torch.manual_seed(1)
    w = torch.randn(8, 5, 3) * 3
    scale, zero_point = group_qparams(w.reshape(8, 15), 8, bits, symmetric)  # [8, 1, 1]
    scale = scale * 0.5  # ranges half too small: the largest values clip
    fused_in = w.clone().requires_grad_()
    fused = fake_quantize(fused_in, scale, zero_point, bits, symmetric)
    generic_in = w.clone().requires_grad_()
    # [8, 1, 1] scale broadcast against [8, 5, 3] through a transposed view takes the generic path.
    generic = fake_quantize(generic_in.transpose(0, 2), scale.transpose(0, 2), zero_point.transpose(0, 2),
                            bits, symmetric).transpose(0, 2)
    assert torch.equal(fused, generic)
    fused.sum().backward()
    generic.sum().backward()
    assert torch.equal(fused_in.grad, generic_in.grad)
    assert 0 < fused_in.grad.sum() < w.numel()  # some values were clipped, some passed
