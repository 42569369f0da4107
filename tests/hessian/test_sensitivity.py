"""The per-layer analysis: runs x layers, Omega, determinism, errors, cache."""

from __future__ import annotations

import json
import logging

import pytest
import torch

from tiny_bert import tiny_model
from qbert.data.module import PadCollator
from qbert.hessian import SensitivityError, analyze, draw_run_batches
from qbert.hessian import cache
from qbert.hessian.sensitivity import AnalysisSettings as S
from qbert.hessian.sensitivity import Sensitivity, batches_per_run_for


def windows(n=40, length=7, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [{"input_ids": torch.randint(1, 40, (length,), generator=g).tolist(), "attention_mask": [1] * length,
             "labels": int(torch.randint(0, 3, (), generator=g))} for _ in range(n)]


COLLATE = PadCollator(pad_token_id=0)
FAST = dict(fraction=0.5, runs=3, batch_size=4, max_iters=30, tol=1e-4, progress=False)


def test_draw_run_batches_takes_disjoint_batches_from_a_seeded_pool():
    runs = draw_run_batches(100, 0.2, 4, 5, torch.Generator().manual_seed(0))
    assert [len(r) for r in runs] == [5] * 4
    flat = [i for r in runs for i in r]
    assert len(set(flat)) == 20  # the pool of 20 is used up without repeats
    again = draw_run_batches(100, 0.2, 4, 5, torch.Generator().manual_seed(0))
    assert runs == again
    longer = draw_run_batches(100, 0.2, 6, 5, torch.Generator().manual_seed(0))
    assert set(i for r in longer[4:] for i in r) <= set(flat)  # past the pool: reshuffled, same pool
    with pytest.raises(ValueError, match="hessian.fraction"):
        draw_run_batches(100, 0.02, 1, 5, torch.Generator().manual_seed(0))


def test_analysis_records_every_layer_and_run_and_omega():
    model = tiny_model()
    sens = analyze(model, windows(), COLLATE, S(seed=0, with_trace=True, trace_samples=4, landscape_layers=[1],
                   landscape_points=5, **FAST))
    assert sens.layers == ["encoder.layer.0", "encoder.layer.1"]
    assert len(sens.eigenvalues) == 3 and all(len(r) == 2 for r in sens.eigenvalues)
    lam = torch.tensor(sens.eigenvalues, dtype=torch.float64)
    expected = lam.mean(0).abs() + lam.std(0, correction=0)
    assert sens.omega == pytest.approx(expected.tolist())
    assert len(sens.traces) == 3 and sens.mean_trace_per_weight[0] == pytest.approx(
        float(torch.tensor(sens.traces)[:, 0].mean()) / sens.num_parameters[0])
    assert list(sens.landscape) == ["encoder.layer.1"]
    curve = sens.landscape["encoder.layer.1"]
    assert curve["eps"][2] == 0.0 and curve["loss"][2] == pytest.approx(sens.losses[0])  # eps=0: the loss itself
    assert sens.timing["power_hvp_calls"] == sum(map(sum, sens.iterations))
    for run_res, run_conv in zip(sens.residuals, sens.converged):  # the stopping rule, recorded
        assert all(res <= FAST["tol"] for res, conv in zip(run_res, run_conv) if conv)
    assert sens.timing["trace_hvp_calls"] == 3 * 2 * 4
    assert model.training is False  # the caller's mode, kept
    table = sens.table()
    assert [r["layer"] for r in table] == sens.layers and table[0]["omega"] == pytest.approx(sens.omega[0])


def test_analysis_is_deterministic_and_leaves_the_weights_alone():
    model = tiny_model()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    a = analyze(model, windows(), COLLATE, S(seed=3, landscape_layers=None, landscape_points=5, **FAST))
    b = analyze(model, windows(), COLLATE, S(seed=3, landscape_layers=(), **FAST))
    c = analyze(model, windows(), COLLATE, S(seed=4, landscape_layers=(), **FAST))
    assert a.eigenvalues == b.eigenvalues and a.batches == b.batches
    assert c.batches != a.batches
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_a_streamed_analysis_gives_the_kept_graphs_numbers():
    # 3 batches a run, eigenvalues and traces: streaming changes the memory, not the result.
    settings = dict(seed=0, fraction=0.9, runs=2, batch_size=4, batches_per_run=3, max_iters=30, tol=1e-4,
                    with_trace=True, trace_samples=3, landscape_layers=(), progress=False)
    kept = analyze(tiny_model(), windows(), COLLATE, S(**settings))
    streamed = analyze(tiny_model(), windows(), COLLATE, S(stream=True, **settings))
    assert streamed.batches == kept.batches and streamed.iterations == kept.iterations
    assert torch.allclose(torch.tensor(streamed.eigenvalues), torch.tensor(kept.eigenvalues), rtol=1e-10, atol=0)
    assert torch.allclose(torch.tensor(streamed.traces), torch.tensor(kept.traces), rtol=1e-10, atol=0)
    assert streamed.losses == pytest.approx(kept.losses, rel=1e-12)
    t = streamed.timing
    assert t["stream"] and t["batches_per_run"] == 3
    # one pass per lockstep step (the slower layer's iterations) and per trace probe, per run
    assert t["passes"] == sum(max(run) for run in streamed.iterations) + 2 * 3
    assert t["power_hvp_calls"] == sum(map(sum, streamed.iterations)) and t["trace_hvp_calls"] == 2 * 2 * 3


def test_run_fraction_gives_each_run_that_share_of_the_training_windows():
    # SST-2: 10 % of 67,349 sentences = 6,734.9 -> 210 full batches of 32 (6,720 sentences)
    assert batches_per_run_for(67_349, 32, None, 0.1) == 210
    assert batches_per_run_for(67_349, 32, None, 0.0001) == 1  # at least one batch
    assert batches_per_run_for(67_349, 32, 1, None) == 1
    with pytest.raises(ValueError, match="exactly one"):
        batches_per_run_for(100, 4, 2, 0.1)
    with pytest.raises(ValueError, match="exactly one"):
        batches_per_run_for(100, 4, None, None)
    # 40 windows, runs of 20 % = 8 windows = 2 batches of 4, from the whole set: disjoint runs
    sens = analyze(tiny_model(), windows(), COLLATE, S(seed=0, fraction=1.0, runs=3, batch_size=4,
                   batches_per_run=None, run_fraction=0.2, stream=True, max_iters=3, tol=1e-3,
                   landscape_layers=(), progress=False))
    assert [len(r) for r in sens.batches] == [8, 8, 8]
    assert len({i for r in sens.batches for i in r}) == 24
    assert sens.timing["batches_per_run"] == 2


@pytest.mark.parametrize("num_windows", [40, 43, 67_349])
def test_published_runs_of_a_tenth_each_take_disjoint_windows(num_windows):
    # hessian=published: 10 runs of run_fraction=0.1 from the whole set never reuse a window
    # (43 windows: 4.3 -> 1 batch of 4 a run; rounding up to 2 would need 80 windows and reshuffle)
    per_run = 4 * batches_per_run_for(num_windows, 4, None, 0.1)
    runs = draw_run_batches(num_windows, 1.0, 10, per_run, torch.Generator().manual_seed(0))
    assert all(len(r) == per_run for r in runs)
    assert len({i for r in runs for i in r}) == 10 * per_run


def test_no_convergence_warns_with_layer_and_run_or_raises(caplog):
    model = tiny_model()
    with caplog.at_level(logging.WARNING):
        sens = analyze(model, windows(), COLLATE, S(seed=0, fraction=0.5, runs=1, batch_size=4, max_iters=2,
                       tol=1e-12, progress=False, landscape_layers=()))
    assert sens.converged == [[False, False]]
    assert "encoder.layer.0, run 0: power iteration did not converge" in caplog.text
    assert "encoder.layer.1, run 0: power iteration did not converge" in caplog.text
    assert len([r for r in caplog.records if "did not converge" in r.getMessage()]) == 1  # one warning, every case
    with pytest.raises(SensitivityError, match=r"encoder.layer.0, run 0: .*did not converge"):
        analyze(model, windows(), COLLATE, S(seed=0, fraction=0.5, runs=1, batch_size=4, max_iters=2, tol=1e-12,
                on_no_convergence="error", progress=False, landscape_layers=()))


def test_a_non_finite_estimate_names_layer_and_run():
    model = tiny_model()
    with torch.no_grad():
        model.bert.encoder.layer[1].output.dense.weight[0, 0] = float("inf")
    with pytest.raises(SensitivityError, match=r"encoder.layer.\d, run 0: non-finite"):
        analyze(model, windows(), COLLATE, S(seed=0, landscape_layers=(), **{**FAST, "runs": 1}))


def test_sensitivity_round_trips_through_json_and_the_cache(tmp_path):
    sens = analyze(tiny_model(), windows(), COLLATE, S(seed=0, landscape_layers=(), **FAST))
    sens.settings = {"cache_key": "abc"}
    path = cache.cache_path(tmp_path, "sst2_tiny", "abc")
    cache.save(path, sens)
    loaded = cache.load(path, "abc")
    assert loaded.eigenvalues == sens.eigenvalues and loaded.omega == pytest.approx(sens.omega)
    assert json.loads(path.read_text())["omega"] == pytest.approx(sens.omega)
    assert cache.load(tmp_path / "absent.json", "abc") is None
    with pytest.raises(ValueError, match="not 'xyz'"):
        cache.load(path, "xyz")


def test_the_stopping_rule_is_part_of_the_cache_key():
    # Analyses cached before the residual rule were stopped on the relative change of the estimate
    # (their settings have no "stop"): their key differs, so they are recomputed, not reused.
    from qbert.config import HessianConfig
    from qbert.hessian.mixed_precision import analysis_settings
    settings = analysis_settings(HessianConfig(), seed=0)
    assert settings["stop"] == "residual"
    before = {k: v for k, v in settings.items() if k != "stop"}
    fields = {"weights": "abc", "task": {"name": "sst2"}}
    assert cache.cache_key({**fields, "analysis": settings}) != cache.cache_key({**fields, "analysis": before})


@pytest.mark.parametrize("damage", ['{"omega": [1.0', "[1, 2]", '{"settings": {}}', b"\xff\xfe"])
def test_a_damaged_hessian_cache_is_recomputed_with_a_warning_naming_it(tmp_path, caplog, damage):
    path = cache.cache_path(tmp_path, "sst2_tiny", "abc")
    path.write_bytes(damage if isinstance(damage, bytes) else damage.encode())
    assert cache.load(path, "abc") is None
    assert any(str(path) in r.getMessage() and "damaged" in r.getMessage() for r in caplog.records)


def test_weights_hash_follows_the_weights():
    a, b = tiny_model(seed=0), tiny_model(seed=0)
    assert cache.weights_hash(a) == cache.weights_hash(b)
    with torch.no_grad():
        b.bert.encoder.layer[0].output.dense.weight[0, 0] += 1e-9
    assert cache.weights_hash(a) != cache.weights_hash(b)
    assert Sensitivity.from_dict({**cache.Sensitivity([], [], [], [], []).to_dict()}).layers == []
