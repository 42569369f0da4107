"""quant=q8bert / q8bert_ptq / mkq through the whole pipeline on the tiny BERT, and their config
errors."""

from __future__ import annotations

import pytest
import torch

from qbert.config import validate
from qbert.models import build_task_model, build_tokenizer, load_finetuned_
from qbert.pipeline import run
from qbert_testing import FAST


@pytest.fixture(scope="module")
def finetuned(tmp_path_factory):
    """One full-precision start shared by the runs below (made by the first run that needs it)."""
    return f"finetuned_dir={tmp_path_factory.mktemp('ft')}"


def test_q8bert_ptq_is_dynamic_and_trains_nothing(compose_cfg, tmp_path, finetuned):
    ptq = run(compose_cfg(["task=sst2", "quant=q8bert_ptq", *FAST, finetuned], output_dir=tmp_path / "ptq"))
    assert ptq["steps"] == 0 and ptq["config"]["eval_only"] is True
    linears = {n: s for n, s in ptq["quantization_map"].items() if ".encoder." in n}
    assert linears and all(s["dynamic"] and s["a_bits"] == 8 and s["w_bits"] == 8 for s in linears.values())
    assert "bert.embeddings.token_type_embeddings" in ptq["quantization_map"]


def test_q8bert_qat_uses_the_configured_ema_decay(compose_cfg, tmp_path, finetuned):
    q8 = run(compose_cfg(["task=sst2", "quant=q8bert", "quant.delay_steps=1", *FAST, finetuned],
                         output_dir=tmp_path / "q8"))
    assert q8["steps"] == 3 and q8["distill"] is None
    assert {s["momentum"] for n, s in q8["quantization_map"].items() if ".encoder." in n} == {0.9999}


def test_mkq_distils_from_the_fp_start_and_is_rebuilt_from_its_folder(compose_cfg, tmp_path, finetuned):
    mkq = run(compose_cfg(["task=sst2", "quant=mkq", *FAST, finetuned], output_dir=tmp_path / "mkq"))
    assert mkq["distill"]["teacher"] == mkq["weights"]["init_from"]
    specs = {n: s for n, s in mkq["quantization_map"].items() if ".encoder." in n}
    assert all(s["learned"] == "lsq" and s["w_bits"] == 4 and s["a_bits"] == 4 for s in specs.values())
    # the learned scales are saved with the weights and come back with them
    again = run(compose_cfg(["task=sst2", *FAST, f"init_from={tmp_path / 'mkq'}", "eval_only=true"],
                            output_dir=tmp_path / "eval"))
    assert again["quantization_map"] == mkq["quantization_map"] and again["metrics"] == mkq["metrics"]
    cfg = validate(compose_cfg(["task=sst2", *FAST]))
    model = build_task_model(cfg.model, cfg.task, vocab_size=len(build_tokenizer(cfg.model)))
    load_finetuned_(model, tmp_path / "mkq")
    scales = [m.input_quantizer.scale for m in model.modules() if hasattr(m, "input_quantizer")]
    assert scales and all(bool(torch.isfinite(s)) and s.item() > 0 for s in scales)


def test_mkq_without_distillation(compose_cfg, tmp_path, finetuned):
    plain = run(compose_cfg(["task=conll03", "quant=mkq", "distill.enabled=false", *FAST, finetuned],
                            output_dir=tmp_path / "nokd"))
    assert plain["distill"] is None and plain["steps"] == 3


def test_a_teacher_of_another_task_is_refused(compose_cfg, tmp_path, finetuned):
    conll = run(compose_cfg(["task=conll03", "quant=q8bert_ptq", *FAST, finetuned], output_dir=tmp_path / "c"))
    with pytest.raises(ValueError, match="config key 'distill.teacher'"):
        run(compose_cfg(["task=sst2", "quant=mkq", *FAST, finetuned,
                         f"distill.teacher={conll['weights']['init_from']}"], output_dir=tmp_path / "bad"))


@pytest.mark.parametrize("overrides,key", [
    (["quant=q8bert_ptq", "eval_only=false"], "eval_only"),
    (["quant=mkq", "quant.scale_grad=mkq"], "quant.scale_grad"),
    (["quant=mkq", "quant.scale_lr=2"], "quant.scale_lr"),
    (["quant=q8bert", "quant.ema_decay=1.0"], "quant.ema_decay"),
    (["quant=q8bert", "quant.delay_steps=-1"], "quant.delay_steps"),
    (["quant=mkq", "distill.temperature=0"], "distill.temperature"),
    (["quant=mkq", "distill.hidden_weight=-1"], "distill.hidden_weight"),
    (["distill.enabled=true"], "distill.enabled"),  # quant=none: nothing to distil into
    (["quant=mkq", "eval_only=true"], "distill.enabled"),
])
def test_config_errors_name_the_key(compose_cfg, overrides, key):
    with pytest.raises(ValueError, match=f"config key '{key}'"):
        validate(compose_cfg(["task=sst2", *overrides]))


def test_mkq_defaults(compose_cfg):
    cfg = validate(compose_cfg(["quant=mkq"]))
    assert (cfg.quant.w_bits, cfg.quant.a_bits, cfg.quant.scale_grad, cfg.distill.enabled) == (4, 4, "lsq", True)
    assert not validate(compose_cfg(["quant=mkq", "distill.enabled=false"])).distill.enabled
    assert not validate(compose_cfg(["quant=q8bert"])).distill.enabled
