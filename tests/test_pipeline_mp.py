"""Q-BERT MP through the pipeline: sensitivity computed once and cached, per-layer widths applied."""

from __future__ import annotations

import json

import pytest

from qbert_testing import FAST
from qbert.config import validate
from qbert.pipeline import run

HESSIAN = ["hessian.fraction=0.5", "hessian.runs=2", "hessian.batch_size=8", "hessian.max_iters=10",
           "hessian.landscape_points=5"]
MP = [*FAST, "quant=qbert_mp", "quant.groups=32", *HESSIAN]


def layer_bits(results: dict) -> list[int]:
    bits = {}
    for name, spec in results["quantization_map"].items():
        if ".encoder.layer." in name:
            layer = int(name.split("encoder.layer.")[1].split(".")[0])
            bits.setdefault(layer, set()).add(spec["w_bits"])
    assert all(len(b) == 1 for b in bits.values())  # one width per layer
    return [bits[i].pop() for i in sorted(bits)]


def test_mixed_precision_runs_once_and_is_reused(compose_cfg, tmp_path):
    shared = [f"finetuned_dir={tmp_path / 'ft'}", f"hessian.cache_dir={tmp_path / 'cache'}"]
    mp23 = run(compose_cfg(["task=sst2", *MP, *shared], output_dir=tmp_path / "mp23"))
    mp = mp23["mixed_precision"]
    assert not mp["from_cache"]
    assert sorted(mp["bits"]) == [2, 3] and layer_bits(mp23) == mp["bits"]
    # the more sensitive layer got the high width
    assert mp["bits"][max(range(2), key=lambda i: mp["scores"][i])] == 3
    assert [row["layer"] for row in mp["table"]] == ["encoder.layer.0", "encoder.layer.1"]
    out = tmp_path / "mp23" / "hessian"
    assert {p.name for p in out.iterdir()} >= {"sensitivity.json", "allocation.json", "eigenvalues.png",
                                               "loss_landscape.png"}
    assert (out / "eigenvalues.png").stat().st_size > 5000
    assert mp23["size"]["encoder"]["mib"] == pytest.approx(mp["size_wo_e_mib"], abs=1e-3)

    mp24 = run(compose_cfg(["task=sst2", *MP, *shared, "quant.high_bits=4"], output_dir=tmp_path / "mp24"))
    assert mp24["mixed_precision"]["from_cache"]  # same weights, data and settings: not recomputed
    assert mp24["mixed_precision"]["scores"] == mp["scores"]
    assert sorted(layer_bits(mp24)) == [2, 4]
    assert len(list((tmp_path / "cache").iterdir())) == 1

    # streamed products give the same numbers: the cached analysis serves a streamed run too
    streamed = run(compose_cfg(["task=sst2", *MP, *shared, "hessian.stream=true"], output_dir=tmp_path / "st"))
    assert streamed["mixed_precision"]["from_cache"] and streamed["mixed_precision"]["scores"] == mp["scores"]

    reseeded = run(compose_cfg(["task=sst2", *MP, *shared, "hessian.seed=7"], output_dir=tmp_path / "s7"))
    assert not reseeded["mixed_precision"]["from_cache"]
    assert len(list((tmp_path / "cache").iterdir())) == 2


def test_a_run_fraction_analysis_streams_its_batches(compose_cfg, tmp_path):
    # hessian=published's form (a share of the training data per run, streamed) on the tiny run
    results = run(compose_cfg(["task=sst2", *MP, "hessian.batches_per_run=null", "hessian.run_fraction=0.25",
                               "hessian.stream=true", f"finetuned_dir={tmp_path / 'ft'}",
                               f"hessian.cache_dir={tmp_path / 'cache'}"], output_dir=tmp_path / "rf"))
    assert not results["mixed_precision"]["from_cache"]
    record = json.loads((tmp_path / "rf" / "hessian" / "sensitivity.json").read_text())
    timing = record["timing"]
    assert timing["stream"] and timing["batches_per_run"] >= 2 and timing["passes"] >= 2
    assert [len(r) for r in record["batches"]] == [8 * timing["batches_per_run"]] * 2  # batch_size 8, 2 runs
    assert record["settings"]["run_fraction"] == 0.25


def test_ilp_allocation_with_trace_sensitivity_on_token_classification(compose_cfg, tmp_path):
    results = run(compose_cfg(["task=conll03", *MP, "quant.allocation=ilp", "hessian.sensitivity=trace",
                               "hessian.trace_samples=3", f"finetuned_dir={tmp_path / 'ft'}",
                               f"hessian.cache_dir={tmp_path / 'cache'}"], output_dir=tmp_path / "ilp"))
    mp = results["mixed_precision"]
    assert mp["allocation"] == "ilp" and mp["sensitivity"] == "trace"
    assert set(mp["bits"]) <= {2, 3, 4, 8} and layer_bits(results) == mp["bits"]
    assert mp["size_wo_e_mib"] <= mp["budget_mib"] + 1e-9  # default budget: the 2/3 rule's size
    assert mp["objective"] <= mp["rule_objective"] + 1e-12  # optimal, so never worse than the rule
    record = json.loads((tmp_path / "ilp" / "hessian" / "sensitivity.json").read_text())
    assert record["traces"] and record["settings"]["with_trace"]


def test_an_impossible_size_budget_is_a_clear_error(compose_cfg, tmp_path):
    with pytest.raises(ValueError, match="below the smallest allocation"):
        run(compose_cfg(["task=sst2", *MP, "quant.allocation=ilp", "quant.size_budget_mb=0.001",
                         f"finetuned_dir={tmp_path / 'ft'}", f"hessian.cache_dir={tmp_path / 'cache'}"],
                        output_dir=tmp_path / "x"))


@pytest.mark.parametrize("override,key", [
    ("quant.high_bits=2", "quant.high_bits"), ("quant.avg_bits=3.5", "quant.avg_bits"),
    ("quant.allocation=greedy", "quant.allocation"), ("quant.bit_choices=[2,16]", "quant.bit_choices"),
    ("hessian.runs=0", "hessian.runs"), ("hessian.fraction=1.5", "hessian.fraction"),
    ("hessian.sensitivity=fisher", "hessian.sensitivity"), ("hessian.tol=0", "hessian.tol"),
    ("quant.allocation=manual", "quant.layer_bits"), ("quant.layer_bits=[2,3]", "quant.layer_bits"),
])
def test_bad_mixed_precision_settings_name_their_key(compose_cfg, override, key):
    with pytest.raises(ValueError, match=f"config key '{key}'"):
        validate(compose_cfg(["quant=qbert_mp", override]))


def test_manual_allocation_applies_the_given_widths_without_an_analysis(compose_cfg, tmp_path):
    cache_dir = tmp_path / "cache"
    results = run(compose_cfg(["task=sst2", *MP, "quant.allocation=manual", "quant.layer_bits=[4,2]",
                               f"finetuned_dir={tmp_path / 'ft'}", f"hessian.cache_dir={cache_dir}"],
                              output_dir=tmp_path / "manual"))
    assert layer_bits(results) == [4, 2] and results["mixed_precision"]["allocation"] == "manual"
    assert not cache_dir.exists()  # no analysis ran
    with pytest.raises(ValueError, match="config key 'quant.layer_bits': 3 widths"):
        run(compose_cfg(["task=sst2", *MP, "quant.allocation=manual", "quant.layer_bits=[4,2,2]",
                         f"finetuned_dir={tmp_path / 'ft'}"], output_dir=tmp_path / "bad"))
