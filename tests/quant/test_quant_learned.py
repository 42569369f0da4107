"""Learned scales (LSQ / LSQ+): gradients against a hand derivation, data initialisation,
training moves the scale, reload, and the optimizer groups they land in."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from qbert.quant import (
    LearnedActivationQuantizer,
    LearnedWeightQuantizer,
    QuantLinear,
    QuantSpec,
    calibration,
    lsq_fake_quantize,
    mkq_plan,
    plan_from_dict,
    quantization_map,
    quantize_,
)
from qbert.quant.learned import mse_range
from qbert.quant.primitives import MIN_SCALE
from qbert.train.module import param_groups

X = torch.tensor([0.3, -0.55, 0.1, 1.2, -2.0])
UPSTREAM = torch.tensor([1.0, 2.0, 3.0, 4.0, 5.0])


def _grads(x, scale, offset, bits, symmetric, g=1.0):
    x = x.clone().requires_grad_()
    scale = torch.tensor(scale, requires_grad=True)
    offset = torch.tensor(offset, requires_grad=not symmetric)
    y = lsq_fake_quantize(x, scale, offset, bits, symmetric, g)
    (y * UPSTREAM).sum().backward()
    return y.detach(), x.grad, scale.grad, offset.grad


def test_symmetric_lsq_gradients_match_a_hand_derivation():
    # 3 bits symmetric: grid [-3, 3], s = 0.25. v = x/s = [1.2, -2.2, 0.4, 4.8, -8]:
    # the last two are clipped; q = [1, -2, 0, 3, -3].
    y, gx, gs, _ = _grads(X, 0.25, 0.0, 3, True)
    assert torch.allclose(y, torch.tensor([0.25, -0.5, 0.0, 0.75, -0.75]))
    assert torch.allclose(gx, torch.tensor([1.0, 2.0, 3.0, 0.0, 0.0]))  # STE, zero where clipped
    # dy/ds = q - v inside, q where clipped: [-0.2, 0.2, -0.4, 3, -3]; weighted by 1..5: -4.0
    assert gs.item() == pytest.approx(-4.0, abs=1e-5)
    # LSQ's gradient scale multiplies the scale's gradient only.
    _, gx_g, gs_g, _ = _grads(X, 0.25, 0.0, 3, True, g=0.1)
    assert torch.equal(gx_g, gx) and gs_g.item() == pytest.approx(-0.4, abs=1e-6)


def test_asymmetric_lsq_plus_gradients_match_a_hand_derivation():
    # 3 bits asymmetric: grid [0, 7], s = 0.25, offset b = -0.5. v = (x - b)/s =
    # [3.2, -0.2, 2.4, 6.8, -6]: the 2nd and 5th are clipped at 0; q = [3, 0, 2, 7, 0].
    y, gx, gs, gb = _grads(X, 0.25, -0.5, 3, False)
    assert torch.allclose(y, torch.tensor([0.25, -0.5, 0.0, 1.25, -0.5]))
    assert torch.allclose(gx, torch.tensor([1.0, 0.0, 3.0, 4.0, 0.0]))
    # dy/ds = [3-3.2, 0, 2-2.4, 7-6.8, 0] -> -0.2 - 1.2 + 0.8 = -0.6
    assert gs.item() == pytest.approx(-0.6, abs=1e-5)
    # dy/db = 1 where clipped: 2 + 5
    assert gb.item() == pytest.approx(7.0, abs=1e-6)


@pytest.mark.parametrize("step", [MIN_SCALE, 1e-12, 0.0, -0.1])
def test_a_step_at_or_below_its_floor_still_gets_the_gradient_that_raises_it(step):
    # At (or under) MIN_SCALE the forward uses the floor; every |x / s| is then far outside the
    # 3-bit grid, so all elements are clipped (q = +-3) and y = q * MIN_SCALE ~ 0. The squared
    # error sum((y - x)^2) falls as the step grows: dL/ds = sum(2 (y - x) q) < 0, and it must
    # reach the step (a plain clamp gives 0 below the floor).
    x = X.clone()
    scale = torch.tensor(step, requires_grad=True)
    y = lsq_fake_quantize(x, scale, 0.0, 3, True)
    assert torch.isfinite(y).all() and y.abs().max().item() <= 3 * MIN_SCALE * (1 + 1e-6)
    (y - x).square().sum().backward()
    q = torch.sign(x) * 3
    expected = (2 * (y.detach() - x) * q).sum()
    assert scale.grad is not None and scale.grad.item() < 0
    assert scale.grad.item() == pytest.approx(expected.item(), rel=1e-6)
    # A gradient step therefore moves the step up, off the floor.
    assert (scale - 0.01 * scale.grad).item() > step


def test_a_weight_quantizer_whose_steps_sit_at_the_floor_still_trains_them():
    w = torch.randn(4, 8)
    q = LearnedWeightQuantizer(3, rows=4, groups=2)
    with torch.no_grad():
        q.scale.fill_(0.0)  # e.g. driven to zero by a large learning rate
    (q(w) - w).square().sum().backward()
    assert (q.scale.grad < 0).all()


def test_lsq_matches_the_round_pass_formulation_of_the_paper():
    """The LSQ paper's own code: y = round_pass(clamp(x/s', ...)) * s' with s' = grad_scale(s, g)."""
    torch.manual_seed(0)
    x = torch.randn(4, 6) * 2
    g = 0.3

    def reference(x, s):
        s_ = (s - s * g).detach() + s * g
        v = (x / s_).clamp(-7, 7)
        return ((v.round() - v).detach() + v) * s_

    xa, sa = x.clone().requires_grad_(), torch.tensor(0.4, requires_grad=True)
    xb, sb = x.clone().requires_grad_(), torch.tensor(0.4, requires_grad=True)
    (lsq_fake_quantize(xa, sa, 0.0, 4, True, g) * x).sum().backward()
    (reference(xb, sb) * x).sum().backward()
    assert torch.allclose(xa.grad, xb.grad) and sa.grad.item() == pytest.approx(sb.grad.item(), rel=1e-5)


def test_weight_quantizer_uses_lsq_gradient_scale_per_group():
    w = torch.randn(4, 8)
    q = LearnedWeightQuantizer(4, rows=4, groups=2)
    q.init_(w)
    q(w).sum().backward()
    g = 1 / math.sqrt(2 * 8 * 7)  # 16 weights per group, Qp = 7
    wg, s = w.reshape(2, 2, 8), q.scale.detach()
    v = wg / s
    inside = (v >= -7) & (v <= 7)
    expected = ((v.clamp(-7, 7).round() - torch.where(inside, v, 0 * v)).sum(dim=(1, 2)) * g).reshape(2, 1, 1)
    assert torch.allclose(q.scale.grad, expected, atol=1e-6)
    unscaled = LearnedWeightQuantizer(4, rows=4, groups=2, scale_grad="lsq_unscaled")
    unscaled.init_(w)
    unscaled(w).sum().backward()
    assert torch.allclose(unscaled.scale.grad * g, q.scale.grad, atol=1e-6)


def test_weight_scale_is_initialised_from_the_weight():
    torch.manual_seed(0)
    lin = nn.Linear(64, 64)
    lin.weight.data.normal_(0, 0.05)  # 4,096 Gaussian weights: max |w| about 4 std, the least-
    w = lin.weight.detach()  # squared-error 4-bit clipping about 2.5 std
    q = QuantLinear.from_float(lin, QuantSpec(w_bits=4, a_bits=32, learned="lsq"))
    s = q.weight_quantizer.scale.detach().reshape(())
    _, hi = mse_range(w.reshape(1, 64, 64), 4, True, dim=(1, 2))
    max_abs_step = w.abs().max().item() / 7
    assert s.item() == pytest.approx(hi.item() / 7) and s.item() < 0.8 * max_abs_step  # clipped
    err_init = (q.weight_quantizer(w) - w).square().sum()
    err_max_abs = (torch.round(w / max_abs_step).clamp(-7, 7) * max_abs_step - w).square().sum()
    assert err_init < err_max_abs


def test_activation_scale_and_offset_come_from_calibration_data():
    q = LearnedActivationQuantizer(4, symmetric=False).eval()
    with pytest.raises(RuntimeError, match="calibration"):
        q(torch.randn(2, 3))
    batches = [torch.rand(4, 10) * 6 - 1, torch.rand(4, 10) * 4 - 1]
    with calibration(q):
        for b in batches:
            q(b)
    ranges = [mse_range(b, 4, False) for b in batches]
    lo = sum(r[0] for r in ranges).reshape(()) / 2
    hi = sum(r[1] for r in ranges).reshape(()) / 2
    assert q.scale.item() == pytest.approx(((hi - lo) / 15).item(), rel=1e-5)
    assert q.offset.item() == pytest.approx(lo.item(), rel=1e-5)
    frozen = (q.scale.item(), q.offset.item())
    q(torch.randn(4, 10) * 100)  # eval outside calibration: nothing changes
    assert (q.scale.item(), q.offset.item()) == frozen


def test_learned_scale_moves_during_training():
    torch.manual_seed(0)
    lin = nn.Linear(16, 8)
    target = nn.Linear(16, 8)
    q = QuantLinear.from_float(lin, QuantSpec(w_bits=4, a_bits=4, symmetric=False, learned="lsq")).train()
    opt = torch.optim.Adam(q.parameters(), lr=1e-2)
    x = torch.randn(64, 16)
    with calibration(q.eval()):
        q(x)
    q.train()
    start = {n: p.detach().clone() for n, p in q.named_parameters() if "quantizer" in n}
    losses = []
    for _ in range(20):
        loss = (q(x) - target(x).detach()).square().mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    moved = {n: (p.detach() - start[n]).abs().max().item() for n, p in q.named_parameters() if n in start}
    assert set(moved) == {"weight_quantizer.scale", "input_quantizer.scale", "input_quantizer.offset"}
    assert all(v > 1e-3 for v in moved.values()), moved
    assert losses[-1] < losses[0]


def test_a_learned_model_is_rebuilt_from_its_quantization_map(make_model, tiny_batch):
    model = quantize_(make_model(), mkq_plan(groups=2))
    inputs = {k: v for k, v in tiny_batch.items() if k != "labels"}
    with calibration(model), torch.no_grad():
        model(**inputs)
    qmap = quantization_map(model)
    assert {s["learned"] for n, s in qmap.items() if "encoder" in n} == {"lsq"}
    fresh = quantize_(make_model(seed=1), plan_from_dict(qmap))
    fresh.load_state_dict(model.state_dict(), strict=True)
    with torch.no_grad():
        assert torch.equal(fresh(**inputs).logits, model(**inputs).logits)


@pytest.mark.parametrize("attention_operands", [False, True])
def test_scales_get_their_own_optimizer_group_without_weight_decay(make_model, attention_operands):
    model = quantize_(make_model(), mkq_plan(attention_operands=attention_operands))
    groups = param_groups(model, weight_decay=0.01, lr=2e-5, scale_lr=1e-3)
    scale_ids = {id(p) for n, p in model.named_parameters() if "quantizer" in n}
    assert len(groups) == 3 and {id(p) for p in groups[2]["params"]} == scale_ids
    assert attention_operands == any("operand_quantizers" in n for n, p in model.named_parameters())
    assert groups[2]["weight_decay"] == 0.0 and groups[2]["lr"] == 1e-3
    assert not scale_ids & {id(p) for g in groups[:2] for p in g["params"]}
    assert param_groups(model, 0.01, 2e-5)[2]["lr"] == 2e-5  # no scale_lr: the run's lr
