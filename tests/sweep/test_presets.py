"""Every experiment preset composes with every value of its sweep axes, and one job of each
runs end to end with model=tiny on the committed slices."""

from __future__ import annotations

import itertools
import json

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from omegaconf import OmegaConf

from qbert.config import CONF_DIR, validate
from qbert import methods
from qbert_testing import FAST, compose_config

PRESETS = sorted(p.stem for p in (CONF_DIR / "experiment").glob("*.yaml"))
TABLE_PRESETS = [p for p in PRESETS if p != "demo"]
TINY_JOB = [*FAST, "hessian.runs=2", "hessian.batch_size=4", "hessian.fraction=0.5", "hessian.max_iters=3",
            "hessian.plots=false"]
TINY_QUANT = {"groups": "2", "calibration_batches": "2"}  # where the job's method reads them


def tiny_job(overrides: list[str]) -> list[str]:
    """TINY_JOB plus the small quant settings the job's method reads (others would be refused)."""
    run = validate(compose_config(overrides))
    reads = methods.get(run.quant.method).reads_when(run.eval_only)
    return [*TINY_JOB, *(f"quant.{k}={v}" for k, v in TINY_QUANT.items() if k in reads)]


def sweep_params(preset: str) -> dict[str, list[str]]:
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose(config_name="train", overrides=[f"experiment={preset}", "output_dir=."],
                      return_hydra_config=True)
    params = OmegaConf.to_container(cfg.hydra.sweeper.params) or {}
    return {key: [v.strip() for v in str(values).split(",")] for key, values in params.items()}


def jobs(preset: str) -> list[list[str]]:
    params = sweep_params(preset)
    return [[f"{k}={v}" for k, v in zip(params, combo)] for combo in itertools.product(*params.values())]


def test_presets_exist_for_every_table():
    assert {"qbert_mnli", "qbert_conll03", "qbert_sst2", "qbert_squad", "qbert_groups", "qbert_modules",
            "q8bert", "mkq", "qbert_sst2_demo"} <= set(PRESETS)


@pytest.mark.parametrize("preset", TABLE_PRESETS)
def test_every_job_of_a_preset_composes_and_validates(preset):
    combos = jobs(preset)
    assert combos, f"{preset} sweeps nothing"
    seeds = {o for combo in combos for o in combo if o.startswith("seed=")}
    if preset != "qbert_sst2_demo":
        assert len(seeds) >= 3, f"{preset}: seeds are a sweep axis with >= 3 values"
    # one seed: the seed changes no composition, the other axes do
    first_seed = sorted(seeds)[0] if seeds else None
    for combo in combos:
        if first_seed and first_seed not in combo:
            continue
        run = validate(compose_config([f"experiment={preset}", *combo]))
        assert run.experiment_name == preset and run.quant.method != "none"


PAPER_ROWS = {f"{m}_w{b}" for m in ("directq", "qbert") for b in (8, 4, 3, 2)} | {"qbert_mp_2_3", "qbert_mp_2_4"}
PLUS_ROWS = {"qbert_plus_w3", "qbert_plus_w2", "qbert_plus_mp_2_3"}


@pytest.mark.parametrize("preset", ["qbert_sst2", "qbert_conll03", "qbert_mnli", "qbert_squad"])
def test_paper_table_presets_keep_the_papers_method_and_add_the_plus_rows(preset):
    rows = {o.split("=")[1] for combo in jobs(preset) for o in combo if o.startswith("row=")}
    assert rows == PAPER_ROWS | PLUS_ROWS
    for row in rows:
        run = validate(compose_config([f"experiment={preset}", f"row={row}"]))
        quant = run.quant
        if row in PAPER_ROWS:  # the paper's max |w| on the restricted grid, no distillation
            assert (quant.w_range, quant.w_grid, run.distill.enabled) == ("minmax", None, False), row
        else:
            assert (quant.w_range, quant.w_grid, quant.groups) == ("mse", "full", 128), row
            assert quant.method == ("qbert_mp" if "mp" in row else "qbert")


def test_paper_table_presets_cover_the_paper_rows():
    rows = {o.split("=")[1] for combo in jobs("qbert_sst2") for o in combo if o.startswith("row=")}
    assert rows == PAPER_ROWS | PLUS_ROWS
    widths = {}
    for row in rows:
        quant = validate(compose_config(["experiment=qbert_sst2", f"row={row}"])).quant
        widths[row] = (quant.method, quant.w_bits, quant.e_bits, quant.a_bits, quant.high_bits)
    assert widths["directq_w3"] == ("directq", 3, 8, 8, 3) and widths["qbert_w2"][:2] == ("qbert", 2)
    assert widths["qbert_mp_2_4"] == ("qbert_mp", 2, 8, 8, 4)
    assert widths["qbert_plus_w3"][:2] == ("qbert", 3) and widths["qbert_plus_mp_2_3"] == ("qbert_mp", 2, 8, 8, 3)


@pytest.mark.slow
@pytest.mark.parametrize("preset", TABLE_PRESETS)
def test_one_job_of_each_preset_runs(preset, tmp_path):
    from qbert.pipeline import run

    combos = jobs(preset)
    # the richest job: Q-BERT MP where the preset has it (the Hessian analysis on every task)
    combo = next((c for c in combos if "row=qbert_mp_2_3" in c), combos[-1])
    cfg = compose_config([f"experiment={preset}", *combo, *tiny_job([f"experiment={preset}", *combo]),
                          f"finetuned_dir={tmp_path / 'ft'}",
                          f"hessian.cache_dir={tmp_path / 'hessian'}"], output_dir=tmp_path / "job")
    results = run(cfg)
    assert results["experiment"] == preset and results["steps"] >= 1
    assert isinstance(results["primary_metric"], float)
    written = json.loads((tmp_path / "job" / "results.json").read_text())
    assert written["config_hash"] == results["config_hash"]
