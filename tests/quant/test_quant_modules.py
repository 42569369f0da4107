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
