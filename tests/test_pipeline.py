"""Whole runs on CPU: every task fits and tests with a tiny BERT; MiniLM once; results.json."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from qbert_testing import FAST
from qbert.pipeline import run

RESULT_FIELDS = {"task", "model", "method", "seed", "config_hash", "primary_metric_name", "primary_metric",
                 "metrics", "val_metrics", "data", "weights", "num_parameters", "model_size_mb",
                 "timing_seconds", "steps", "device", "git", "versions", "config"}
EXPECTED_METRICS = {"sst2": {"dev": "accuracy"}, "mnli": {"dev_mismatched": "accuracy"},
                    "conll03": {"valid": "f1", "test": "f1"}, "squad": {"dev": "f1"}}


@pytest.mark.parametrize("task", ["sst2", "mnli", "conll03", "squad"])
def test_each_task_fits_and_tests_with_a_tiny_bert(compose_cfg, tmp_path, task):
    results = run(compose_cfg([f"task={task}", *FAST], output_dir=tmp_path))
    written = json.loads((tmp_path / "results.json").read_text())
    assert RESULT_FIELDS <= written.keys()
    assert written["steps"] == 3
    for split, metric in EXPECTED_METRICS[task].items():
        assert 0.0 <= written["metrics"][split][metric] <= 100.0
    assert written["primary_metric"] == results["primary_metric"]
    assert written["config"]["task"]["name"] == task
    assert written["versions"]["torch"] and written["versions"]["transformers"]
    assert written["timing_seconds"]["wall"] > 0
    assert (tmp_path / "model" / "model.safetensors").is_file()
    if task == "squad":
        assert set(written["metrics"]["dev"]) == {"exact_match", "f1"}
    if task == "mnli":
        assert "not the paper" in written["data"]["protocol_note"]


def test_results_are_deterministic_on_cpu(compose_cfg, tmp_path):
    first = run(compose_cfg(["task=sst2", *FAST], output_dir=tmp_path / "a"))
    second = run(compose_cfg(["task=sst2", *FAST], output_dir=tmp_path / "b"))
    assert first["config_hash"] == second["config_hash"]
    assert first["metrics"] == second["metrics"]
    assert first["val_metrics"] == second["val_metrics"]
    third = run(compose_cfg(["task=sst2", *FAST, "seed=7"], output_dir=tmp_path / "c"))
    assert third["config_hash"] != first["config_hash"]


def test_start_from_a_finetuned_run(compose_cfg, tmp_path):
    trained = run(compose_cfg(["task=sst2", *FAST], output_dir=tmp_path / "ft"))
    again = run(compose_cfg(["task=sst2", *FAST, f"init_from={tmp_path / 'ft'}", "eval_only=true"],
                            output_dir=tmp_path / "eval"))
    assert again["steps"] == 0
    assert again["metrics"] == trained["metrics"]  # same weights, same predictions


def test_init_from_another_task_is_refused(compose_cfg, tmp_path):
    run(compose_cfg(["task=sst2", *FAST], output_dir=tmp_path / "ft"))
    with pytest.raises(ValueError, match="init_from"):
        run(compose_cfg(["task=mnli", *FAST, f"init_from={tmp_path / 'ft'}"], output_dir=tmp_path / "x"))


def test_init_from_a_missing_folder_names_it(compose_cfg, tmp_path):
    with pytest.raises(FileNotFoundError, match="init_from"):
        run(compose_cfg(["task=sst2", *FAST, f"init_from={tmp_path / 'nowhere'}"], output_dir=tmp_path))


def test_csv_and_wandb_offline_loggers(compose_cfg, tmp_path, monkeypatch):
    run(compose_cfg(["task=sst2", *FAST, "logger=csv"], output_dir=tmp_path / "csv"))
    assert (tmp_path / "csv" / "csv" / "metrics.csv").is_file()
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setenv("NETRC", str(tmp_path / "no-netrc"))
    run(compose_cfg(["task=sst2", *FAST, "logger=wandb", "experiment_name=unit"], output_dir=tmp_path / "wb"))
    offline_runs = list((tmp_path / "wb" / "wandb").glob("offline-run-*"))
    assert len(offline_runs) == 1


@pytest.mark.slow
def test_minilm_on_a_slice(compose_cfg, tmp_path):
    """The real pretrained model loads offline from its package and runs a few steps."""
    results = run(compose_cfg(["task=sst2", "model=minilm", "trainer=debug", "trainer.max_steps=40",
                               "trainer.limit_train_batches=40", "trainer.limit_test_batches=4",
                               "data.max_train_samples=640", "data.max_eval_samples=128",
                               "optim.batch_size=16", "optim.lr=1e-4", "optim.eval_batch_size=32"],
                              output_dir=tmp_path))
    assert results["num_parameters"] == 22_713_986
    assert results["weights"]["source"].endswith("model")
    # 40 steps from a good sentence encoder clearly beat the 50 % of a coin on SST-2.
    assert results["metrics"]["dev"]["accuracy"] > 60.0


@pytest.mark.slow
def test_cli_end_to_end(tmp_path):
    """`qbert ...` as a user types it: Hydra parses, the run writes its folder."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    out = subprocess.run([sys.executable, "-m", "qbert.cli", "task=conll03", *FAST,
                          f"hydra.run.dir={tmp_path / 'run'}"], capture_output=True, text=True, env=env,
                         cwd=Path(__file__).resolve().parent.parent, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "[qbert] conll03 / tiny / none: test/f1 =" in out.stdout
    assert (tmp_path / "run" / "results.json").is_file()
    bad = subprocess.run([sys.executable, "-m", "qbert.cli", "task=sst2", "optim.lr=7"],
                         capture_output=True, text=True, env=env, timeout=300,
                         cwd=Path(__file__).resolve().parent.parent)
    assert bad.returncode != 0 and "config key 'optim.lr'" in bad.stderr
    # a refused input is one line naming the key, not a traceback burying it
    assert "Traceback" not in bad.stderr and "qbert: error: config key 'optim.lr'" in bad.stderr


@pytest.mark.slow
def test_fine_tuning_runs_with_dropout_on(compose_cfg, tmp_path, monkeypatch):
    """from_pretrained returns eval mode; training must still switch every module to train."""
    from qbert.train.module import TaskModule

    seen = []
    original = TaskModule.training_step

    def spy(self, batch, batch_idx):
        seen.append(all(m.training for m in self.model.modules()))
        return original(self, batch, batch_idx)

    monkeypatch.setattr(TaskModule, "training_step", spy)
    run(compose_cfg(["task=sst2", "model=minilm", "trainer=debug", "trainer.max_steps=1",
                     "data.max_train_samples=8", "data.max_eval_samples=8"], output_dir=tmp_path))
    assert seen == [True]


def test_last_checkpoint_is_written_without_validation(compose_cfg, tmp_path, monkeypatch):
    """The defaults validate nothing and keep no best checkpoint; a job killed in its second epoch
    must still find checkpoints/last.ckpt from its first (Lightning's save_last alone wrote it
    only when fit ended)."""
    import torch

    from qbert.train import trainer as trainer_module
    seen = []
    save = trainer_module.SaveLastEachEpoch.on_train_epoch_end

    def recording(self, trainer, module):
        save(self, trainer, module)
        state = torch.load(self.path, map_location="cpu", weights_only=False)
        seen.append((trainer.current_epoch, state["global_step"]))

    monkeypatch.setattr(trainer_module.SaveLastEachEpoch, "on_train_epoch_end", recording)
    run(compose_cfg(["task=sst2", *FAST, "trainer.validate=never", "trainer.limit_val_batches=null",
                     "trainer.save_checkpoints=true", "trainer.max_steps=6", "optim.epochs=2"], output_dir=tmp_path))
    assert seen == [(0, 3), (1, 6)]
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["last.ckpt"]


def test_eval_checkpoint_best_tests_the_best_validation_checkpoint(compose_cfg, tmp_path):
    results = run(compose_cfg(["task=sst2", *FAST, "trainer.eval_checkpoint=best", "trainer.validate=always",
                               "trainer.save_checkpoints=true", "trainer.max_steps=6", "optim.epochs=2"],
                              output_dir=tmp_path))
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["best.ckpt", "last.ckpt"]
    assert results["primary_metric"] is not None
