"""quant.w_range / w_percentile / w_grid: validated, read by the methods that build statistics
ranges (and refused by the others), carried into every plan they build, neutral in the hash."""

from __future__ import annotations

import pytest
from omegaconf import OmegaConf

from qbert import methods
from qbert.config import W_GRIDS, W_RANGES, validate
from qbert.quant.plan import assign
from qbert.quant.primitives import GRIDS, WEIGHT_RANGE_METHODS
from qbert.report.record import config_hash
from qbert.sweep.jobs import job_hash

LINEARS = [(f"bert.encoder.layer.{i}.{kind}", "Linear", True) for i in range(2)
           for kind in ("attention.self.query", "attention.self.key", "attention.self.value",
                        "attention.output.dense", "intermediate.dense", "output.dense")]
EMBEDDINGS = [(f"bert.embeddings.{t}_embeddings", "Embedding", True) for t in ("word", "position", "token_type")]


def _validated(compose_cfg, *overrides):
    return validate(compose_cfg(["model=tiny", *overrides]))


def test_the_config_names_match_the_library():
    assert W_RANGES == WEIGHT_RANGE_METHODS and W_GRIDS == GRIDS


@pytest.mark.parametrize("override,message", [
    ("quant.w_range=kl", "quant.w_range"),
    ("quant.w_grid=signed", "quant.w_grid"),
    ("quant.w_percentile=0", "quant.w_percentile"),
    ("quant.w_percentile=99.9", "quant.w_percentile"),  # read only with w_range=percentile
])
def test_bad_values_name_the_key(compose_cfg, override, message):
    with pytest.raises(ValueError, match=f"config key '{message}'"):
        _validated(compose_cfg, "quant=qbert", override)


@pytest.mark.parametrize("grid", ["restricted", "full"])
def test_a_symmetric_weight_grid_with_symmetric_false_is_refused_naming_both_keys(compose_cfg, grid):
    with pytest.raises(ValueError, match="config key 'quant.w_grid'") as err:
        _validated(compose_cfg, "quant=qbert", "quant.symmetric=false", f"quant.w_grid={grid}")
    assert "quant.symmetric=false" in str(err.value)


def test_consistent_grids_are_accepted(compose_cfg):
    for overrides in (["quant.symmetric=false", "quant.w_grid=asymmetric"],  # redundant, consistent
                      ["quant.w_grid=asymmetric"],  # asymmetric weights, symmetric inputs
                      ["quant.w_grid=full", "quant.w_range=mse"],
                      ["quant.w_range=percentile", "quant.w_percentile=99.5"]):
        _validated(compose_cfg, "quant=qbert", *overrides)


@pytest.mark.parametrize("method", ["q8bert", "mkq", "none"])
def test_methods_that_do_not_read_them_refuse_them(compose_cfg, method):
    for override in ("quant.w_range=mse", "quant.w_grid=asymmetric"):
        with pytest.raises(ValueError, match=f"config key '{override.split('=')[0]}'.*not read by quant={method}"):
            _validated(compose_cfg, f"quant={method}", override)


@pytest.mark.parametrize("method", ["qbert", "qbert_mp", "directq", "ablation"])
def test_every_weight_the_method_quantizes_gets_them(compose_cfg, method):
    extra = ["quant.module=ffn"] if method == "ablation" else []
    extra += [] if method == "directq" else ["quant.groups=2"]
    run = _validated(compose_cfg, f"quant={method}", "quant.w_range=mse", "quant.w_grid=asymmetric", *extra)
    assert {"w_range", "w_grid", "w_percentile"} <= methods.get(method).reads
    plan = methods.plan_for(run.quant, 2, [2, 3] if method == "qbert_mp" else None)
    specs = assign(plan, LINEARS + EMBEDDINGS)
    assert specs and {(s.weight_range, s.weight_grid) for s in specs.values()} == {("mse", "asymmetric")}
    assert all(s.symmetric for s in specs.values())  # inputs stay symmetric
    default = assign(methods.plan_for(_validated(compose_cfg, f"quant={method}", *extra).quant, 2,
                                      [2, 3] if method == "qbert_mp" else None), LINEARS + EMBEDDINGS)
    assert all(s.w_range is None and s.w_grid is None for s in default.values())


def test_the_ablation_of_an_embedding_gets_them(compose_cfg):
    run = _validated(compose_cfg, "quant=ablation", "quant.module=word_embedding", "quant.w_range=mse",
                     "quant.w_grid=full")
    (spec,) = assign(methods.plan_for(run.quant, 2), LINEARS + EMBEDDINGS).values()
    assert (spec.weight_range, spec.weight_grid) == ("mse", "full")


def test_table_labels_name_a_variant_and_keep_the_papers_names_for_the_defaults():
    def label(method, **quant):
        return methods.label({"quant": {"method": method, **quant}})
    assert [label(m) for m in ("qbert", "directq", "qbert_mp")] == ["Q-BERT", "DirectQ", "Q-BERT MP"]
    assert label("qbert", w_range="minmax", w_grid=None, w_percentile=99.99) == "Q-BERT"
    assert label("qbert", w_range="mse") == "Q-BERT (mse ranges)"
    assert label("directq", w_range="mse", w_grid="full") == "DirectQ (mse ranges, full grid)"
    assert label("qbert", w_range="percentile", w_percentile=99.9) == "Q-BERT (p99.9 ranges)"
    assert label("ablation", module="ffn", w_grid="asymmetric") == "Q-BERT, ffn only (asymmetric grid)"
    assert methods.label({"quant": {"method": "qbert_mp", "allocation": "ilp", "w_range": "mse"},
                          "hessian": {"sensitivity": "trace"}}) == "Q-BERT MP ILP (trace, mse ranges)"


def test_hash_is_unchanged_by_the_new_keys_at_their_defaults(compose_cfg):
    base = ["task=sst2", "quant=qbert", "quant.w_bits=2", "trainer.precision=32-true"]
    plain = job_hash(compose_cfg(base))
    assert plain == "725d0ef4b370"  # pinned in test_config_hash.py too
    explicit = ["quant.w_range=minmax", "quant.w_grid=null", "quant.w_percentile=99.99"]
    assert job_hash(compose_cfg([*base, *explicit])) == plain
    config = OmegaConf.to_container(compose_cfg(base), resolve=True)
    new_keys = ("w_range", "w_grid", "w_percentile")
    older = {**config, "quant": {k: v for k, v in config["quant"].items() if k not in new_keys}}
    assert config_hash(older) == config_hash(config)  # results written before the keys existed
    changed = {job_hash(compose_cfg([*base, o])) for o in ("quant.w_range=mse", "quant.w_grid=full",
                                                           "quant.w_grid=asymmetric")}
    assert len(changed) == 3 and plain not in changed
