"""quant.a_range / a_sites / a_site_bits and quant.groups_per_head: validated (naming the key),
read by the methods that build EMA input ranges or group-wise weights (refused by the others),
carried into the plans they build, neutral in the hash."""

from __future__ import annotations

import dataclasses

import pytest
from omegaconf import OmegaConf

from qbert import methods
from qbert.config import A_RANGES, A_SITES, InputSiteBits, InputSiteModes, validate
from qbert.quant.input_ranges import A_RANGES as LIBRARY_A_RANGES
from qbert.quant.input_ranges import SITES, site_of
from qbert.quant.plan import assign
from qbert.report.record import config_hash
from qbert.sweep.jobs import job_hash

LINEARS = [(f"bert.encoder.layer.{i}.{kind}", "Linear", True) for i in range(2)
           for kind in ("attention.self.query", "attention.self.key", "attention.self.value",
                        "attention.output.dense", "intermediate.dense", "output.dense")]
EMBEDDINGS = [(f"bert.embeddings.{t}_embeddings", "Embedding", True) for t in ("word", "position", "token_type")]
NEW_KEYS = ("a_range", "a_sites", "a_site_bits", "groups_per_head")


def _validated(compose_cfg, *overrides):
    return validate(compose_cfg(["model=tiny", *overrides]))


def test_the_config_names_match_the_library():
    assert A_RANGES == LIBRARY_A_RANGES and A_SITES == SITES
    for section in (InputSiteModes, InputSiteBits):
        assert tuple(f.name for f in dataclasses.fields(section)) == SITES


def test_a_misspelt_site_is_refused_with_the_closest_one(compose_cfg):
    with pytest.raises(Exception, match="quant.a_sites.ffn_output"):  # Hydra: not in the schema
        _validated(compose_cfg, "quant=qbert", "quant.a_sites.ffn_output=per_token")
    with pytest.raises(ValueError, match="'quant.a_sites.ffn_output' .did you mean 'quant.a_sites.ffn_out'"):
        _validated(compose_cfg, "quant=qbert", "+quant.a_sites.ffn_output=per_token")


@pytest.mark.parametrize("overrides,key", [
    (["quant.a_range=dynamic"], "quant.a_range"),
    (["quant.a_sites.ffn_out=per_channel"], "quant.a_sites.ffn_out"),
    (["quant.a_site_bits.ffn_out=9"], "quant.a_site_bits.ffn_out"),
    (["quant.a_bits=32", "quant.a_range=per_token"], "quant.a_range"),  # every input stays float
    (["quant.a_site_bits.ffn_out=32", "quant.a_sites.ffn_out=per_token"], "quant.a_sites.ffn_out"),
    (["quant.a_range=per_token", "quant.a_sites.qkv=ema", "quant.a_sites.attn_out=ema", "quant.a_sites.ffn_in=ema",
      "quant.a_sites.ffn_out=ema"], "quant.a_range"),
    (["quant.groups_per_head=0"], "quant.groups_per_head"),
    (["quant.groups_per_head=2", "quant.heads_as_groups=true"], "quant.groups_per_head"),
    (["quant.groups_per_head=3"], "quant.groups_per_head"),  # tiny: head size 16
])
def test_bad_values_name_the_key(compose_cfg, overrides, key):
    with pytest.raises(ValueError, match=f"config key '{key}'"):
        _validated(compose_cfg, "quant=qbert", *overrides)


def test_a_range_for_some_float_inputs_is_accepted_when_one_input_is_quantized(compose_cfg):
    run = _validated(compose_cfg, "quant=qbert", "quant.a_bits=32", "quant.a_range=per_token_asym",
                     "quant.a_site_bits.ffn_out=8")
    specs = assign(methods.plan_for(run.quant, 2), LINEARS + EMBEDDINGS)
    assert {site_of(n) for n, s in specs.items() if s.per_token} == {"ffn_out"}
    assert all(s.a_bits == 32 for n, s in specs.items() if site_of(n) not in (None, "ffn_out"))


@pytest.mark.parametrize("method", ["q8bert", "mkq", "none"])
def test_methods_that_do_not_read_them_refuse_them(compose_cfg, method):
    for override in ("quant.a_range=ema_asym", "quant.a_sites.ffn_out=per_token", "quant.a_site_bits.ffn_out=8",
                     "quant.groups_per_head=2"):
        key = ".".join(override.split("=")[0].split(".")[:2])
        with pytest.raises(ValueError, match=f"config key '{key}'.*not read by quant={method}"):
            _validated(compose_cfg, f"quant={method}", override)


def test_q8bert_ptq_refuses_them(compose_cfg):
    with pytest.raises(ValueError, match="config key 'quant.a_range'.*not read by quant=q8bert_ptq"):
        _validated(compose_cfg, "quant=q8bert_ptq", "quant.a_range=per_token")


def test_directq_refuses_groups_per_head(compose_cfg):
    with pytest.raises(ValueError, match="config key 'quant.groups_per_head'.*not read by quant=directq"):
        _validated(compose_cfg, "quant=directq", "quant.groups_per_head=2")


@pytest.mark.parametrize("method", ["qbert", "qbert_mp", "directq", "ablation"])
def test_every_input_the_method_quantizes_gets_them(compose_cfg, method):
    extra = ["quant.module=ffn", "quant.a_bits=8"] if method == "ablation" else []
    run = _validated(compose_cfg, f"quant={method}", "quant.a_range=ema_asym", "quant.a_sites.ffn_out=per_token",
                     "quant.a_site_bits.ffn_out=6", *extra)
    assert set(NEW_KEYS[:3]) <= methods.get(method).reads
    specs = assign(methods.plan_for(run.quant, 2, [2, 3] if method == "qbert_mp" else None), LINEARS + EMBEDDINGS)
    linears = {n: s for n, s in specs.items() if site_of(n)}
    assert linears
    for name, spec in linears.items():
        ffn_out = site_of(name) == "ffn_out"
        assert spec.per_token == ffn_out and spec.a_bits == (6 if ffn_out else 8), name
        assert spec.symmetric == ffn_out  # per_token keeps quant.symmetric=true; ema_asym is asymmetric
        assert spec.weight_grid == "restricted", name  # the weights keep their grid
    assert all(s.symmetric for n, s in specs.items() if not site_of(n))  # embeddings untouched


@pytest.mark.parametrize("method", ["qbert", "qbert_mp", "ablation"])
def test_groups_per_head_nests_the_qkv_groups(compose_cfg, method):
    extra = ["quant.module=self_attention"] if method == "ablation" else []
    run = _validated(compose_cfg, f"quant={method}", "quant.groups=4", "quant.groups_per_head=4", *extra)
    specs = assign(methods.plan_for(run.quant, 2, [2, 3] if method == "qbert_mp" else None), LINEARS + EMBEDDINGS)
    groups = {site_of(n): s.groups for n, s in specs.items() if site_of(n)}
    assert groups.pop("qkv") == 8 and set(groups.values()) == {4}  # 2 heads x 4; other matrices keep quant.groups


def test_ablation_refuses_input_settings_for_sites_it_leaves_float(compose_cfg):
    run = _validated(compose_cfg, "quant=ablation", "quant.module=ffn", "quant.a_bits=8",
                     "quant.a_sites.qkv=per_token")
    with pytest.raises(ValueError, match="qkv"):
        methods.plan_for(run.quant, 2)


def test_table_labels_name_the_variant():
    def label(method, **quant):
        return methods.label({"quant": {"method": method, **quant}})
    no_sites = {"qkv": None, "attn_out": None, "ffn_in": None, "ffn_out": None}
    assert label("qbert", a_range="ema", a_sites=no_sites, a_site_bits=no_sites, groups_per_head=None) == "Q-BERT"
    assert label("qbert", a_range="ema_asym") == "Q-BERT (ema_asym inputs)"
    assert label("directq", a_sites={"ffn_out": "per_token"}, a_site_bits={"ffn_out": 8}) == \
        "DirectQ (ffn_out per_token a8)"
    assert label("qbert", groups_per_head=2, w_range="mse") == "Q-BERT (mse ranges, 2 groups per head)"


def test_hash_is_unchanged_by_the_new_keys_at_their_defaults(compose_cfg):
    base = ["task=sst2", "quant=qbert", "quant.w_bits=2", "trainer.precision=32-true"]
    plain = job_hash(compose_cfg(base))
    assert plain == "725d0ef4b370"  # pinned in test_config_hash.py too
    explicit = ["quant.a_range=ema", "quant.a_sites.ffn_out=null", "quant.a_site_bits.qkv=null",
                "quant.groups_per_head=null"]
    assert job_hash(compose_cfg([*base, *explicit])) == plain
    config = OmegaConf.to_container(compose_cfg(base), resolve=True)
    older = {**config, "quant": {k: v for k, v in config["quant"].items() if k not in NEW_KEYS}}
    assert config_hash(older) == config_hash(config)  # results written before the keys existed
    changed = {job_hash(compose_cfg([*base, o])) for o in (
        "quant.a_range=ema_asym", "quant.a_sites.ffn_out=per_token", "quant.a_site_bits.ffn_out=4",
        "quant.groups_per_head=2")}
    assert len(changed) == 4 and plain not in changed
