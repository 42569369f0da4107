"""QuantSpec validation and precision-plan resolution."""

import json

import pytest

from qbert.quant.plan import QuantSpec, assign, key_matches, normalize_plan, plan_from_dict, plan_to_dict

MODULES = [("", "Root", False), ("enc.0.q", "Linear", True), ("enc.0.k", "Linear", True),
           ("enc.0.ln", "LayerNorm", False), ("enc.1.q", "Linear", True), ("emb", "Embedding", True)]


@pytest.mark.parametrize("field,value", [
    ("w_bits", 1), ("w_bits", 16), ("a_bits", 9), ("groups", 0), ("groups", "head"),
    ("symmetric", 1), ("range", "mse"), ("percentile", 0.0), ("momentum", 1.0),
])
def test_spec_validation_names_field(field, value):
    with pytest.raises(ValueError, match=rf"QuantSpec\.{field}="):
        QuantSpec(**{field: value})


def test_spec_all_float_is_refused_and_dict_roundtrip():
    with pytest.raises(ValueError, match="None"):
        QuantSpec(w_bits=32, a_bits=32)
    s = QuantSpec(w_bits=3, groups="channel", a_bits=8, symmetric=False)
    assert QuantSpec.from_dict(json.loads(json.dumps(s.to_dict()))) == s
    with pytest.raises(ValueError, match="wbits"):
        QuantSpec.from_dict({"wbits": 4})


def test_key_matching_is_exact_or_regex_fullmatch():
    assert key_matches("enc.0.q", "enc.0.q") and not key_matches("enc.0.q", "enc.0.qq")
    assert key_matches(r"re:enc\.\d+\.q", "enc.1.q") and not key_matches(r"re:enc\.\d", "enc.1.q")


def test_first_match_wins_and_none_keeps_float():
    plan = [("enc.0.q", None), (r"re:enc\.\d+\.[qk]", QuantSpec(w_bits=4)), ("re:.*", QuantSpec(w_bits=8))]
    chosen = assign(plan, MODULES)
    assert {n: s.w_bits for n, s in chosen.items()} == {"enc.0.k": 4, "enc.1.q": 4, "emb": 8}


def test_regex_skips_unquantizable_exact_name_does_not():
    assert "enc.0.ln" not in assign([("re:enc.*", QuantSpec())], MODULES)
    with pytest.raises(TypeError, match=r"'enc\.0\.ln', a LayerNorm"):
        assign([("enc.0.ln", QuantSpec())], MODULES)


def test_plan_errors():
    with pytest.raises(ValueError, match=r"module: 'enc\.0\.v'$"):
        assign([("enc.0.q", QuantSpec()), ("enc.0.v", QuantSpec())], MODULES)
    with pytest.raises(ValueError, match="empty"):
        assign([], MODULES)
    with pytest.raises(ValueError, match="quantizes no module"):
        assign([("enc.0.q", None)], MODULES)
    with pytest.raises(ValueError, match="invalid regex"):
        normalize_plan([("re:(", QuantSpec())])
    with pytest.raises(TypeError, match="spec must be"):
        normalize_plan({"x": 4})


def test_plan_json_roundtrip_keeps_order():
    plan = [("enc.0.q", None), (r"re:enc\.\d+\.q", QuantSpec(w_bits=2, groups=2)), ("emb", QuantSpec(w_bits=8))]
    d = json.loads(json.dumps(plan_to_dict(plan)))
    assert list(d) == ["enc.0.q", r"re:enc\.\d+\.q", "emb"]
    assert plan_from_dict(d) == plan
    assert plan_from_dict([[k, v] for k, v in d.items()]) == plan  # list-of-pairs form (YAML)
