"""Config hashes stay put when the schema grows and move when what a run computes changes.

Finished results are found again by their config hash (sweeps skip and reuse them; the
full-precision start is looked up by it), so a hash that moves for nothing recomputes hours of
work, and one that stays put for a real change reuses wrong results.
"""

from __future__ import annotations

from omegaconf import OmegaConf

from qbert.config import hash_neutral_values
from qbert.report import record
from qbert.report.record import config_hash
from qbert.sweep.jobs import job_hash

# The hash of the default config and of two table rows, composed as the CLI would. If one of
# these fails: a field you added needs `added_field(default, neutral=<the value that reproduces
# earlier results>)`, or a default you changed on purpose needs its new pin here (earlier results
# are then rightly recomputed).
PINNED = {
    ("task=sst2",): "2a30749686a1",
    ("task=sst2", "quant=qbert", "quant.w_bits=2"): "725d0ef4b370",
    ("task=conll03", "row=qbert_mp_2_3", "seed=3"): "cfd7877954da",
}


def _hash(compose_cfg, overrides) -> str:
    return job_hash(compose_cfg([*overrides, "trainer.precision=32-true"]))


def test_hashes_of_the_default_config_and_table_rows_are_pinned(compose_cfg):
    assert {k: _hash(compose_cfg, k) for k in PINNED} == PINNED


def test_a_field_added_at_its_neutral_value_leaves_the_hash_unchanged(compose_cfg, monkeypatch):
    config = OmegaConf.to_container(compose_cfg(["task=sst2"]), resolve=True)
    before = config_hash(config)
    grown = {**config, "optim": {**config["optim"], "new_knob": "off"}}
    monkeypatch.setattr(record, "_neutral_values", lambda: (*hash_neutral_values().items(), ("optim.new_knob", "off")))
    assert config_hash(grown) == before
    grown["optim"]["new_knob"] = "on"  # the knob in use: another result
    assert config_hash(grown) != before


def test_the_fields_added_so_far_are_neutral_when_off(compose_cfg):
    config = OmegaConf.to_container(compose_cfg(["task=sst2"]), resolve=True)
    older = {section: dict(values) if isinstance(values, dict) else values for section, values in config.items()}
    for key in hash_neutral_values():
        section, name = key.split(".")
        del older[section][name]  # a config written before the field existed
    off = {section: dict(values) if isinstance(values, dict) else values for section, values in config.items()}
    for key, neutral in hash_neutral_values().items():
        section, name = key.split(".")
        off[section][name] = neutral
    assert config_hash(off) == config_hash(older)
    assert config_hash(config) != config_hash(older)  # the new defaults compute something else


def test_changing_a_default_changes_the_hash(compose_cfg):
    base = _hash(compose_cfg, ["task=sst2"])
    assert _hash(compose_cfg, ["task=sst2", "optim.lr=4e-5"]) != base
    assert _hash(compose_cfg, ["task=sst2", "data.group_by_length=false"]) != base
    fp32 = job_hash(compose_cfg(["task=sst2", "trainer.precision=32-true"]))
    assert job_hash(compose_cfg(["task=sst2", "trainer.precision=bf16-mixed"])) != fp32


def test_where_and_how_loudly_do_not_change_the_hash(compose_cfg):
    base = _hash(compose_cfg, ["task=sst2"])
    for override in ("data.cache_dir=/elsewhere", "hessian.cache_dir=/elsewhere", "finetuned_dir=/elsewhere",
                     "trainer.enable_progress_bar=false", "trainer.validate=always", "logger=csv"):
        assert _hash(compose_cfg, ["task=sst2", override]) == base, override
