"""Hessian presets: `paper_1batch` (the default; `paper` names the same analysis) and `published`
(10 % of the training data per run, streamed); hashes of the existing rows unchanged."""

from __future__ import annotations

import pytest
from omegaconf import OmegaConf

from qbert.config import CONF_DIR, HessianConfig, validate
from qbert.hessian.mixed_precision import analysis_settings
from qbert.hessian import cache
from qbert.sweep.jobs import job_hash

ROW = ["task=conll03", "row=qbert_mp_2_3", "seed=3", "trainer.precision=32-true"]


@pytest.mark.parametrize("option", sorted(p.stem for p in (CONF_DIR / "hessian").glob("*.yaml")))
def test_every_hessian_preset_composes_and_validates(compose_cfg, option):
    assert isinstance(validate(compose_cfg([f"hessian={option}"])).hessian, HessianConfig)


def test_paper_is_the_one_batch_analysis_and_the_default(compose_cfg):
    default = compose_cfg(ROW)
    for name in ("paper", "paper_1batch"):
        cfg = compose_cfg([*ROW, f"hessian={name}"])
        assert OmegaConf.to_container(cfg.hessian) == OmegaConf.to_container(default.hessian)
        assert job_hash(cfg) == job_hash(default) == "cfd7877954da"  # the pinned table-row hash
    hc = validate(default).hessian
    assert (hc.fraction, hc.runs, hc.batch_size, hc.batches_per_run, hc.run_fraction, hc.stream) == \
        (0.1, 10, 32, 1, None, False)


def test_published_takes_a_tenth_of_the_training_data_per_run_streamed(compose_cfg):
    cfg = compose_cfg([*ROW, "hessian=published"])
    hc = validate(cfg).hessian
    assert (hc.fraction, hc.run_fraction, hc.batches_per_run, hc.runs, hc.batch_size, hc.stream) == \
        (1.0, 0.1, None, 10, 32, True)
    assert hc.landscape_layers == []  # a landscape would be 15 passes over a run's data per layer
    assert job_hash(cfg) != job_hash(compose_cfg(ROW))  # another analysis, another result


def test_batches_per_run_and_run_fraction_exclude_each_other():
    with pytest.raises(ValueError, match="hessian.run_fraction"):
        HessianConfig(batches_per_run=2, run_fraction=0.1)
    with pytest.raises(ValueError, match="hessian.run_fraction"):
        HessianConfig(batches_per_run=None)
    with pytest.raises(ValueError, match="hessian.run_fraction"):
        HessianConfig(fraction=0.1, batches_per_run=None, run_fraction=0.2)  # more than the pool
    with pytest.raises(ValueError, match="hessian.batches_per_run"):
        HessianConfig(batches_per_run=0)


def test_streaming_is_not_part_of_the_hessian_cache_key():
    # Same numbers either way (tests/hessian/test_sensitivity.py): one cached analysis serves both.
    kept = analysis_settings(HessianConfig(), seed=1)
    streamed = analysis_settings(HessianConfig(stream=True), seed=1)
    assert kept == streamed and "stream" not in kept
    assert cache.cache_key({"analysis": kept}) == cache.cache_key({"analysis": streamed})
    # run_fraction unset: the key analyses cached before it existed had (pinned at b26da61)
    assert "run_fraction" not in kept and cache.cache_key({"analysis": kept}) == "5ee044ea2e6fbb76"
    fraction = analysis_settings(HessianConfig(fraction=1.0, batches_per_run=None, run_fraction=0.1), seed=1)
    assert cache.cache_key({"analysis": fraction}) != cache.cache_key({"analysis": kept})
