"""Every config option composes and validates; bad values fail naming the key."""

from __future__ import annotations

import pytest
from hydra.errors import ConfigCompositionException
from omegaconf.errors import ConfigKeyError, ValidationError

from qbert.config import CONF_DIR, RunConfig, validate

GROUPS = ["task", "model", "quant", "trainer", "logger"]


def options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONF_DIR / group).glob("*.yaml"))


@pytest.mark.parametrize("group,option", [(g, o) for g in GROUPS for o in options(g)])
def test_every_option_composes_and_validates(compose_cfg, group, option):
    cfg = compose_cfg([f"{group}={option}"])
    run = validate(cfg)
    assert isinstance(run, RunConfig)
    section = getattr(run, group)
    if group == "trainer":
        assert section.accelerator == ("gpu" if option in ("gpu", "ddp") else "cpu")
    else:
        assert getattr(section, "name", getattr(section, "method", None)) == option


def test_task_sets_its_recipe(compose_cfg):
    assert validate(compose_cfg(["task=sst2"])).optim.lr == pytest.approx(3e-5)
    mnli = validate(compose_cfg(["task=mnli"]))
    assert mnli.task.local_splits.train == "dev_matched" and "not the paper" in mnli.task.local_protocol_note
    # A user override beats the task's recipe.
    assert validate(compose_cfg(["task=sst2", "optim.lr=1e-4"])).optim.lr == pytest.approx(1e-4)


def test_typo_fails_at_compose_naming_the_key(compose_cfg):
    with pytest.raises((ConfigCompositionException, ConfigKeyError)) as err:
        compose_cfg(["optim.lrr=1e-4"])
    assert "lrr" in str(err.value) + str(err.value.__cause__)


def test_wrong_type_fails_naming_the_key(compose_cfg):
    with pytest.raises((ConfigCompositionException, ValidationError)) as err:
        compose_cfg(["optim.batch_size=many"])
    assert "batch_size" in str(err.value) + str(err.value.__cause__)


def test_unknown_group_option_fails(compose_cfg):
    with pytest.raises(ConfigCompositionException) as err:
        compose_cfg(["task=imdb"])
    assert "imdb" in str(err.value)


@pytest.mark.parametrize("override,key", [
    ("task.max_length=8", "task.max_length"),
    ("optim.lr=0", "optim.lr"),
    ("optim.warmup_ratio=1.5", "optim.warmup_ratio"),
    ("data.source=web", "data.source"),
    ("data.source=local", "data.root"),
    ("data.max_train_samples=0", "data.max_train_samples"),
    ("trainer.precision=int4", "trainer.precision"),
    ("trainer.eval_checkpoint=median", "trainer.eval_checkpoint"),
    ("logger.mode=sometimes", "logger.mode"),
    ("model.num_heads=5", "model.hidden_size"),
    ("seed=-1", "seed"),
    ("eval_only=true", "eval_only"),  # a random tiny model has nothing to evaluate
    ("quant.calibration_batches=0", "quant.calibration_batches"),
])
def test_range_checks_name_the_key(compose_cfg, override, key):
    with pytest.raises(ValueError, match=f"config key '{key}'"):
        validate(compose_cfg(["model=tiny", override]))


def test_squad_stride_must_fit_the_window(compose_cfg):
    with pytest.raises(ValueError, match="task.doc_stride"):
        validate(compose_cfg(["task=squad", "task.doc_stride=400"]))


def test_local_parallel_launcher_composes():
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose(config_name="train", overrides=["hydra/launcher=local_parallel", "output_dir=."],
                      return_hydra_config=True)
    assert cfg.hydra.launcher._target_.endswith("JoblibLauncher")
    assert cfg.hydra.launcher.n_jobs == 2


def test_slurm_launcher_composes():
    """The SLURM launcher (submitit) composes: no cluster here, so composing is the test."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose(config_name="train", overrides=["hydra/launcher=slurm", "output_dir=.",
                                                      "hydra.launcher.partition=gpu"], return_hydra_config=True)
    assert cfg.hydra.launcher._target_.endswith("SlurmLauncher")
    assert cfg.hydra.launcher.gpus_per_node == 1 and cfg.hydra.launcher.partition == "gpu"
    assert cfg.hydra.callbacks.sweep_report._target_ == "qbert.sweep.callbacks.SweepReport"


@pytest.mark.parametrize(("override", "message"), [
    ("+optim.lrr=3e-5", "config key 'optim.lrr' (did you mean 'optim.lr'?)"),
    ("+seeds=3", "config key 'seeds' (did you mean 'seed'?)"),
    ("+quant.groupz=12", "config key 'quant.groupz' (did you mean 'quant.groups'?)"),
])
def test_a_key_added_with_plus_is_refused_not_stored(compose_cfg, override, message):
    with pytest.raises(ValueError) as err:
        validate(compose_cfg(["model=tiny", override]))
    assert message in str(err.value) and "not a qbert setting" in str(err.value)
