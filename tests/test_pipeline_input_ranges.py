"""A run with input range modes per site and Q/K/V groups nested in heads, end to end: the plan
it records, and the same metrics when rebuilt from its folder."""

from __future__ import annotations

from qbert_testing import FAST
from qbert.pipeline import run


def test_a_run_with_site_modes_and_nested_groups_is_rebuilt_from_its_folder(compose_cfg, tmp_path):
    overrides = ["task=sst2", "quant=qbert", "quant.w_bits=4", *FAST, "quant.groups=32", "quant.groups_per_head=4",
                 "quant.a_range=ema_asym", "quant.a_sites.ffn_out=per_token_asym", "quant.a_site_bits.ffn_out=6",
                 f"finetuned_dir={tmp_path / 'ft'}"]
    trained = run(compose_cfg(overrides, output_dir=tmp_path / "q4"))
    qmap = trained["quantization_map"]
    layer = "bert.encoder.layer.0."
    assert qmap[layer + "attention.self.query"]["groups"] == 8  # tiny: 2 heads x 4
    assert qmap[layer + "attention.self.query"]["symmetric"] is False  # ema_asym input
    assert qmap[layer + "attention.self.query"]["w_grid"] == "restricted"  # symmetric weight
    assert qmap[layer + "output.dense"]["per_token"] and qmap[layer + "output.dense"]["a_bits"] == 6
    assert "per_token" not in qmap[layer + "intermediate.dense"]
    again = run(compose_cfg(["task=sst2", *FAST, f"init_from={tmp_path / 'q4'}", "eval_only=true"],
                            output_dir=tmp_path / "eval"))
    assert again["quantization_map"] == qmap
    assert again["metrics"] == trained["metrics"]
