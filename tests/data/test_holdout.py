"""data.holdout: a slice of the training split held out for recipe choices, so that a table's
reported split is never looked at while choosing."""

from __future__ import annotations

import json

import pytest

from qbert.config import DataConfig
from qbert.data.sources import HOLDOUT, load_split, splits_of
from qbert.pipeline import run
from qbert.report.record import config_hash
from qbert_testing import FAST, compose_config


def _task_and_data(holdout, **data):
    cfg = compose_config(["task=sst2", "data.source=sample", f"data.holdout={holdout}",
                          *[f"data.{k}={v}" for k, v in data.items()]])
    from omegaconf import OmegaConf
    from qbert.config import TaskConfig
    task = OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(TaskConfig), cfg.task))
    return task, OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(DataConfig), cfg.data))


def test_the_held_out_examples_and_the_rest_partition_the_training_split():
    task, data = _task_and_data(50)
    whole = load_split(*_task_and_data("null"), "train")
    rest, held = load_split(task, data, "train"), load_split(task, data, HOLDOUT)
    assert len(held) == 50 and len(rest) == len(whole) - 50
    key = lambda e: json.dumps(e.__dict__ if hasattr(e, "__dict__") else e, sort_keys=True, default=str)  # noqa: E731
    assert sorted(map(key, rest + held)) == sorted(map(key, whole))
    assert load_split(task, data, HOLDOUT) == held  # one fixed draw, whatever the run seed
    assert held != whole[-50:] and held != whole[:50]  # a random draw, not the file's end or start
    assert splits_of(task, data).val == HOLDOUT and splits_of(task, data).test == [HOLDOUT]


def test_the_cuts_apply_after_the_holdout():
    task, data = _task_and_data(50, max_train_samples=30, max_eval_samples=20)
    full_task, full_data = _task_and_data(50)
    assert load_split(task, data, "train") == load_split(full_task, full_data, "train")[:30]
    assert load_split(task, data, HOLDOUT) == load_split(full_task, full_data, HOLDOUT)[:20]


def test_a_holdout_that_leaves_nothing_to_train_on_is_refused():
    task, data = _task_and_data(10**6)
    with pytest.raises(ValueError, match="data.holdout.*leave none"):
        load_split(task, data, "train")
    with pytest.raises(Exception, match="data.holdout"):
        _task_and_data(0)


def test_holdout_changes_the_hash_only_when_set():
    plain = compose_config(["task=sst2", *FAST])
    off = compose_config(["task=sst2", *FAST, "data.holdout=null"])
    on = compose_config(["task=sst2", *FAST, "data.holdout=40"])
    from omegaconf import OmegaConf
    hashes = [config_hash(OmegaConf.to_container(c, resolve=True)) for c in (plain, off, on)]
    assert hashes[0] == hashes[1] != hashes[2]


def test_a_run_with_a_holdout_never_reads_the_reported_split(tmp_path, monkeypatch):
    import qbert.data.sources as sources
    read = []
    original = sources.split_file
    monkeypatch.setattr(sources, "split_file", lambda task, data, split: read.append(split) or original(task, data, split))
    results = run(compose_config(["task=sst2", *FAST, "data.holdout=40"], output_dir=tmp_path))
    assert results["primary_metric_name"] == "holdout/accuracy"
    assert set(results["metrics"]) == {HOLDOUT}
    assert results["data"]["holdout"] == 40 and "held out" in results["data"]["protocol_note"]
    assert "dev" not in read and HOLDOUT in read
