"""WeightQuantizer (QAT ranges from the current weight) and ActivationQuantizer (EMA)."""

import pytest
import torch

from qbert.quant.granularity import group_qparams
from qbert.quant.primitives import compute_qparams, fake_quantize
from qbert.quant.quantizers import ActivationQuantizer, WeightQuantizer


def test_weight_quantizer_matches_groupwise_math_and_follows_weight():
    w = torch.randn(8, 4)
    wq = WeightQuantizer(4, groups=2)
    scale, zp = group_qparams(w, 2, 4, True)
    expected = fake_quantize(w.reshape(2, 4, 4), scale, zp, 4, True).reshape(8, 4)
    assert torch.equal(wq(w), expected)
    # follows the weight: 3x the weight, 3x the scale (up to float rounding of max|w|/7, which
    # can flip a tie, so the grid is compared through the scale rather than by exact equality)
    scale3, zp3 = group_qparams(w * 3, 2, 4, True)
    assert torch.allclose(scale3, scale * 3) and torch.equal(zp3, zp)
    assert torch.equal(wq(w * 3), fake_quantize(w.reshape(2, 4, 4) * 3, scale3, zp3, 4, True).reshape(8, 4))
    assert len(wq.state_dict()) == 0
    q, s, z = wq.quantize_int(w)
    assert q.shape == w.shape and q.dtype == torch.int32 and q.abs().max() <= 7


def test_weight_quantizer_passes_gradient():
    w = torch.randn(6, 3, requires_grad=True)
    WeightQuantizer(3, groups=3)(w).sum().backward()
    assert torch.equal(w.grad, torch.ones_like(w))  # min-max ranges clip nothing


def test_weight_quantizer_off_and_bad_bits():
    w = torch.randn(2, 2)
    assert WeightQuantizer(32)(w) is w
    with pytest.raises(ValueError, match="w_bits=1"):
        WeightQuantizer(1)


def test_activation_ema_updates_in_train_and_freezes_in_eval():
    aq = ActivationQuantizer(8, symmetric=False, momentum=0.9).train()
    aq(torch.tensor([-1.0, 2.0]))
    assert (aq.running_min.item(), aq.running_max.item(), bool(aq.initialized)) == (-1.0, 2.0, True)
    aq(torch.tensor([-3.0, 4.0]))
    assert aq.running_min.item() == pytest.approx(0.9 * -1 + 0.1 * -3)
    assert aq.running_max.item() == pytest.approx(0.9 * 2 + 0.1 * 4)
    frozen = aq.running_min.clone(), aq.running_max.clone()
    aq.eval()
    x = torch.tensor([-50.0, 0.5, 60.0])
    out = aq(x)
    assert torch.equal(aq.running_min, frozen[0]) and torch.equal(aq.running_max, frozen[1])
    s, z = compute_qparams(*frozen, 8, False)
    assert torch.equal(out, fake_quantize(x, s, z, 8, False))
    assert out.max().item() == pytest.approx(frozen[1].item(), abs=s.item())  # clipped to the range


def test_activation_symmetric_tracks_max_abs():
    aq = ActivationQuantizer(8, symmetric=True).train()
    aq(torch.tensor([-5.0, 1.0]))
    assert (aq.running_min.item(), aq.running_max.item()) == (-5.0, 5.0)


def test_activation_eval_before_observing_raises():
    aq = ActivationQuantizer(8).eval()
    with pytest.raises(RuntimeError, match="observed no range"):
        aq(torch.randn(3))
    aq.observing = True  # what surgery.calibration() sets
    aq(torch.tensor([1.0, -2.0]))
    aq.observing = False
    assert aq.running_max.item() == 2.0
    aq(torch.randn(3))


def test_activation_state_dict_roundtrip_and_float_checkpoint():
    aq = ActivationQuantizer(4).train()
    aq(torch.randn(10))
    fresh = ActivationQuantizer(4)
    fresh.load_state_dict(aq.state_dict())
    assert torch.equal(fresh.running_max, aq.running_max) and bool(fresh.initialized)
    fresh2 = ActivationQuantizer(4)
    fresh2.load_state_dict({}, strict=True)  # float checkpoints have no observer state
    assert not bool(fresh2.initialized)
    with pytest.raises(RuntimeError, match="Missing"):
        fresh2.load_state_dict({"running_max": torch.tensor(1.0)}, strict=True)
