"""Weight ranges and grids chosen per spec: the full symmetric grid, mse clipping, their state."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from qbert.quant import QuantLinear, QuantSpec, qbert_plan, quantize_, uniform_plan
from qbert.quant.granularity import group_qparams, group_view
from qbert.quant.modules import weight_quantizer_for
from qbert.quant.plan import assign
from qbert.quant import primitives
from qbert.quant.primitives import (
    GRIDS,
    MSE_CLIP_RATIOS,
    compute_qparams,
    fake_quantize,
    grid_flags,
    mse_clip_ratio,
    qrange,
)
from qbert.quant.quantizers import WeightQuantizer
from qbert.quant.size import size_from_config


@pytest.fixture(autouse=True)
def one_thread():
    # ~100 small elementwise passes per search: on a small machine shared with other work, two
    # threads fighting for the cores make them many times slower than one
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def test_full_grid_has_all_2b_levels():
    assert [qrange(b, True, full=True) for b in (2, 3, 4, 8)] == [(-2, 1), (-4, 3), (-8, 7), (-128, 127)]
    scale, zp = compute_qparams(-1.0, 0.5, 2, True, full=True)  # the lowest level is -max|x|
    assert scale.item() == pytest.approx(0.5) and zp.item() == 0
    with pytest.raises(ValueError, match="symmetric"):
        qrange(2, False, full=True)
    assert [grid_flags(g) for g in GRIDS] == [(True, False), (True, True), (False, False)]
    with pytest.raises(ValueError, match="'fine'"):
        grid_flags("fine")


@pytest.mark.parametrize("bits", [2, 3, 4])
@pytest.mark.parametrize("w_range", ["minmax", "mse"])
def test_full_grid_weights_take_2b_distinct_values(bits, w_range):
    w = torch.randn(64, 256, generator=torch.Generator().manual_seed(bits))
    full = weight_quantizer_for(QuantSpec(w_bits=bits, groups=4, w_grid="full", w_range=w_range), 64, "w")
    restricted = weight_quantizer_for(QuantSpec(w_bits=bits, groups=4, w_range=w_range), 64, "w")
    q, _, zp = full.quantize_int(w)
    assert sorted(q.unique().tolist()) == list(range(-2 ** (bits - 1), 2 ** (bits - 1)))
    assert not zp.any()
    assert len(full(w)[:16].unique()) == 2 ** bits  # one group: 2^b values of Q(W)
    q, _, _ = restricted.quantize_int(w)
    assert int(q.abs().max()) == 2 ** (bits - 1) - 1 and len(restricted(w)[:16].unique()) <= 2 ** bits - 1


def _group_errors(w, groups, bits, grid, method):
    symmetric, full = grid_flags(grid)
    scale, zp = group_qparams(w, groups, bits, symmetric, method, full=full)
    wg = group_view(w, groups)
    return (fake_quantize(wg, scale, zp, bits, symmetric, full) - wg).square().sum(dim=(1, 2))


@pytest.mark.parametrize("grid", GRIDS)
@pytest.mark.parametrize("bits", [2, 3, 4, 8])
def test_mse_is_never_worse_than_minmax_in_any_group(grid, bits):
    g = torch.Generator().manual_seed(bits)
    for w in (torch.randn(96, 64, generator=g),  # Gaussian
              torch.distributions.StudentT(2.0).sample((96, 64)),  # heavy tails: clipping pays most
              torch.rand(96, 64, generator=g) + 0.5,  # all positive: the asymmetric grid's case
              torch.zeros(96, 64)):  # a zero group: any range is exact
        mse, minmax = _group_errors(w, 12, bits, grid, "mse"), _group_errors(w, 12, bits, grid, "minmax")
        assert (mse <= minmax * (1 + 1e-5) + 1e-12).all()
    torch.manual_seed(0)
    heavy = torch.distributions.StudentT(2.0).sample((96, 64))
    if bits <= 3:  # at 2 and 3 bits clipping heavy tails pays clearly
        mse, minmax = (_group_errors(heavy, 12, bits, grid, m).sum() for m in ("mse", "minmax"))
        assert mse < 0.95 * minmax


@pytest.mark.parametrize("grid", GRIDS)
@pytest.mark.parametrize("bits", [2, 8])  # 1000 values: searched by sorting at 2 bits, directly at 8
def test_mse_ratio_is_the_best_candidate_by_brute_force(grid, bits):
    symmetric, full = grid_flags(grid)
    x = torch.randn(3, 1000, generator=torch.Generator().manual_seed(1)) * torch.tensor([[0.1], [1.0], [5.0]])
    x[2] += 3.0  # off-centre: the asymmetric grid's zero point is not at the middle
    lo, hi = x.amin(1, keepdim=True), x.amax(1, keepdim=True)
    ratio = mse_clip_ratio(x, lo, hi, bits, symmetric, full, dim=1)
    for i in range(3):
        errors = []
        for r in MSE_CLIP_RATIOS:
            scale, zp = compute_qparams(lo[i] * r, hi[i] * r, bits, symmetric, full)
            errors.append(float((fake_quantize(x[i], scale, zp, bits, symmetric, full) - x[i]).square().sum()))
        chosen = min(range(len(MSE_CLIP_RATIOS)), key=lambda j: abs(MSE_CLIP_RATIOS[j] - float(ratio[i])))
        assert errors[chosen] == pytest.approx(min(errors), rel=1e-4)
    if bits == 2:
        assert (ratio < 0.9).all()  # 2 bits on Gaussian values: the min/max range is far from the best


@pytest.mark.parametrize("grid", GRIDS)
@pytest.mark.parametrize("bits", [2, 4, 8])
def test_both_ways_of_searching_give_the_same_errors(grid, bits):
    symmetric, full = grid_flags(grid)
    values = torch.randn(4, 3000, generator=torch.Generator().manual_seed(bits))
    values += torch.tensor([[0.0], [2.0], [-1.0], [0.0]])
    values[3] = 0.0  # an all-zero slice
    r = torch.tensor(MSE_CLIP_RATIOS[::10])
    lo, hi = values.amin(1, keepdim=True), values.amax(1, keepdim=True)
    scale, zp = compute_qparams(lo * r, hi * r, bits, symmetric, full)
    qmin, qmax = qrange(bits, symmetric, full)
    by_sorting = primitives._errors_by_sorting(values, scale, zp, qmin, qmax)
    directly = primitives._errors_directly(values, scale, zp, qmin, qmax, symmetric)
    torch.testing.assert_close(by_sorting, directly, rtol=1e-4, atol=1e-9)
    assert MSE_CLIP_RATIOS[0] == 1.0 and MSE_CLIP_RATIOS[-1] == pytest.approx(0.2) and len(MSE_CLIP_RATIOS) == 100


def test_mse_ratios_are_searched_at_first_and_then_every_refresh_steps(monkeypatch):
    import qbert.quant.quantizers as quantizers
    calls = []
    real = quantizers.group_clip_ratio
    monkeypatch.setattr(quantizers, "group_clip_ratio", lambda *a, **k: calls.append(1) or real(*a, **k))
    wq = WeightQuantizer(2, groups=4, range_method="mse", rows=32, refresh_steps=3)
    w = torch.randn(32, 16)
    for _ in range(7):
        wq(w)
    assert len(calls) == 3  # forwards 1, 4 and 7
    ratio = wq.clip_ratio.clone()
    moved = w * 2  # between searches the range follows the weight: ratio x its current max|w|
    max_abs = moved.reshape(4, -1).abs().amax(1).reshape(4, 1, 1)
    torch.testing.assert_close(wq.qparams(moved)[0], compute_qparams(-ratio * max_abs, ratio * max_abs, 2, True)[0])
    assert len(calls) == 3
    wq.eval()
    for _ in range(10):
        wq(w)
    assert len(calls) == 3  # eval mode keeps the ratios
    fresh = WeightQuantizer(2, groups=4, range_method="mse", rows=32).eval()
    fresh(w)  # eval before any search: searched once, then kept
    fresh(w * 3)
    assert len(calls) == 4


def test_mse_state_round_trips_and_a_float_checkpoint_loads_as_not_searched():
    torch.manual_seed(0)
    lin = nn.Linear(16, 32)
    plan = {"re:.*": QuantSpec(w_bits=2, groups=4, w_range="mse", w_grid="asymmetric")}
    model = quantize_(nn.Sequential(lin), plan)
    x = torch.randn(5, 16)
    model.train()
    model(x)
    model(x)  # searched at the first forward; one forward since
    with torch.no_grad():
        model[0].weight.mul_(1.5)  # the weight moves; the ratio stays until the next search
    model.eval()
    ref = model(x)
    state = model.state_dict()
    assert {"0.weight_quantizer.clip_ratio", "0.weight_quantizer.clip_age"} <= set(state)
    fresh = quantize_(nn.Sequential(nn.Linear(16, 32)), plan).eval()
    fresh.load_state_dict(state)  # strict
    torch.testing.assert_close(fresh(x), ref, rtol=0, atol=0)
    assert fresh[0].weight_quantizer._age == model[0].weight_quantizer._age == 1
    float_model = quantize_(nn.Sequential(nn.Linear(16, 32)), plan)
    float_model.load_state_dict(nn.Sequential(nn.Linear(16, 32)).state_dict())  # strict, without the mse state
    assert float_model[0].weight_quantizer._age is None


def test_default_minmax_quantizer_keeps_no_state():
    assert not dict(quantize_(nn.Sequential(nn.Linear(8, 8)), {"0": QuantSpec(w_bits=2)}).named_buffers())


def test_spec_fields_and_refusals():
    spec = QuantSpec(w_bits=2)
    assert (spec.weight_range, spec.weight_grid, spec.weight_symmetric) == ("minmax", "restricted", True)
    assert QuantSpec(w_bits=2, symmetric=False).weight_grid == "asymmetric"
    assert QuantSpec(w_bits=2, w_grid="asymmetric").weight_symmetric is False
    assert QuantSpec(w_bits=2, range="percentile").weight_range == "percentile"
    with pytest.raises(ValueError, match="w_range"):
        QuantSpec(w_bits=2, w_range="kl")
    with pytest.raises(ValueError, match="w_grid"):
        QuantSpec(w_bits=2, w_grid="signed")
    with pytest.raises(ValueError, match="learned"):
        QuantSpec(w_bits=4, learned="lsq", w_range="mse")
    with pytest.raises(ValueError, match="mse"):  # activations have no grid-aware range
        QuantSpec(w_bits=4, range="mse")
    assert QuantSpec.from_dict({"w_bits": 2, "groups": 1}).w_grid is None  # a map from before the keys


def test_asymmetric_weights_with_symmetric_inputs():
    lin = QuantLinear.from_float(nn.Linear(16, 8), QuantSpec(w_bits=3, a_bits=8, w_grid="asymmetric"))
    assert lin.weight_quantizer.symmetric is False and lin.input_quantizer.symmetric is True


def test_plans_carry_weight_settings_to_every_weight_and_defaults_stay_as_they_were():
    names = [("bert.encoder.layer.0.attention.self.query", "Linear", True),
             ("bert.encoder.layer.0.output.dense", "Linear", True),
             ("bert.embeddings.word_embeddings", "Embedding", True),
             ("bert.embeddings.position_embeddings", "Embedding", True)]
    specs = assign(qbert_plan(2, groups=4, w_range="mse", w_grid="full"), names)
    assert {(s.weight_range, s.weight_grid) for s in specs.values()} == {("mse", "full")}
    specs = assign(qbert_plan(2, groups=4, w_range="percentile", percentile=99.0), names)
    assert {(s.weight_range, s.percentile) for s in specs.values()} == {("percentile", 99.0)}
    default = assign(qbert_plan(2, groups=4), names)
    assert all(s == QuantSpec(w_bits=s.w_bits, groups=s.groups, a_bits=s.a_bits) for s in default.values())
    assert assign(uniform_plan(2, range="percentile", w_range="minmax"), names)[names[0][0]].weight_range == "minmax"


def test_storage_size_charges_a_zero_point_for_asymmetric_weight_grids():
    from transformers import BertConfig
    config = BertConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64)
    sym = size_from_config(config, qbert_plan(2, groups=4), convention="storage", prefix="bert.")
    asym = size_from_config(config, qbert_plan(2, groups=4, w_grid="asymmetric"), convention="storage", prefix="bert.")
    full = size_from_config(config, qbert_plan(2, groups=4, w_grid="full"), convention="storage", prefix="bert.")
    assert full.overhead_bits == sym.overhead_bits
    assert asym.overhead_bits["encoder"] == sym.overhead_bits["encoder"] + 6 * 4 * 32  # 6 matrices x 4 groups


def test_sorting_many_slices_takes_the_candidates_in_chunks():
    values = torch.randn(11000, 301, generator=torch.Generator().manual_seed(0))  # one row per channel, say
    r = torch.tensor(MSE_CLIP_RATIOS)
    scale, zp = compute_qparams(values.amin(1, keepdim=True) * r, values.amax(1, keepdim=True) * r, 2, True)
    assert (1 << 22) // (11000 * 4) < len(MSE_CLIP_RATIOS)  # more candidates than one chunk holds
    torch.testing.assert_close(primitives._errors_by_sorting(values, scale, zp, -1, 1),
                               primitives._errors_directly(values, scale, zp, -1, 1, True), rtol=1e-4, atol=1e-9)
