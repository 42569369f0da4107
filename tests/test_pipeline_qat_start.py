"""quant.start: QAT from the full-precision fine-tuned start (every table row) or from the
pre-trained weights (Q8BERT's "QAT during fine-tuning"), through the pipeline on the tiny BERT."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file

from qbert.config import validate
from qbert.methods import label
from qbert.pipeline import run
from qbert_testing import FAST


def test_qat_from_the_pretrained_weights_trains_no_start(compose_cfg, tmp_path):
    finetuned = tmp_path / "ft"
    from_pretrained = run(compose_cfg(["task=sst2", "quant=q8bert", "quant.start=pretrained", *FAST,
                                       f"finetuned_dir={finetuned}"], output_dir=tmp_path / "pt"))
    assert from_pretrained["weights"]["init_from"] is None
    assert not finetuned.exists() or not any(finetuned.iterdir())  # no full-precision start was made
    assert label(from_pretrained["config"]) == "Q8BERT (QAT during fine-tuning)"
    from_start = run(compose_cfg(["task=sst2", "quant=q8bert", *FAST, f"finetuned_dir={finetuned}"],
                                 output_dir=tmp_path / "ft_run"))
    assert from_start["weights"]["init_from"] and str(finetuned) in from_start["weights"]["init_from"]
    assert label(from_start["config"]) == "Q8BERT"
    assert from_start["config_hash"] != from_pretrained["config_hash"]
    # same seed, data and recipe: only the starting weights differ, and so do the trained weights
    assert from_start["steps"] == from_pretrained["steps"]
    trained = [load_file(tmp_path / run_dir / "model" / "model.safetensors") for run_dir in ("pt", "ft_run")]
    assert trained[0].keys() == trained[1].keys()
    assert any(not torch.equal(trained[0][name], trained[1][name]) for name in trained[0])


def test_distillation_from_the_pretrained_weights_still_learns_from_the_fp_start(compose_cfg, tmp_path):
    mkq = run(compose_cfg(["task=sst2", "quant=mkq", "quant.start=pretrained", *FAST,
                           f"finetuned_dir={tmp_path / 'ft'}"], output_dir=tmp_path / "mkq"))
    assert mkq["weights"]["init_from"] is None
    assert mkq["distill"]["teacher"].startswith(str(tmp_path / "ft"))
    assert label(mkq["config"]) == "MKQ-BERT (QAT during fine-tuning)"


@pytest.mark.parametrize("overrides,message", [
    (["quant=q8bert", "quant.start=scratch"], "quant.start"),
    (["quant=qbert_mp", "quant.start=pretrained"], "Hessian analysis ranks the layers of the fine-tuned"),
    (["quant=q8bert", "quant.start=pretrained", "init_from=/some/run"], "leave one of them unset"),
    (["quant=q8bert_ptq", "quant.start=pretrained"], "not read by quant=q8bert_ptq in an eval_only run"),
    (["quant.start=pretrained"], "not read by quant=none"),
])
def test_bad_starts_are_refused_naming_the_key(compose_cfg, overrides, message):
    with pytest.raises(ValueError, match="config key 'quant.start'") as error:
        validate(compose_cfg(["task=sst2", *overrides]))
    assert message in str(error.value)
