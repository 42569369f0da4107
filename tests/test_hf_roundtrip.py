"""A quantized run's model/ through transformers: from_pretrained after `import qbert` rebuilds the
fake-quantized model (same logits, same metric); without qbert it fails loudly instead of loading
the latent floats; a packed model refuses save_pretrained."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch
from transformers import AutoModelForSequenceClassification, AutoModelForTokenClassification

from qbert.config import validate
from qbert.models import build_task_model, build_tokenizer, load_finetuned_
from qbert.pipeline import run
from qbert.quant import QuantLinear, quantization_map
from qbert_testing import FAST

QUANT = [*FAST, "quant.groups=32"]


@pytest.fixture(scope="module")
def quantized_run(tmp_path_factory):
    from qbert_testing import compose_config
    out = tmp_path_factory.mktemp("run")
    cfg = compose_config(["task=sst2", "quant=qbert", "quant.w_bits=3", *QUANT, f"finetuned_dir={out / 'ft'}"],
                         output_dir=out / "q3")
    results = run(cfg)
    return out / "q3", results, validate(cfg)


def _batch(run_cfg):
    tokenizer = build_tokenizer(run_cfg.model)
    return tokenizer(["a gripping , funny film", "dull and far too long"], return_tensors="pt", padding=True)


def test_from_pretrained_rebuilds_the_fake_quantized_model(quantized_run, tmp_path):
    folder, results, run_cfg = quantized_run
    config = json.loads((folder / "model" / "config.json").read_text())
    assert config["model_type"] == "qbert_bert"
    assert config["quantization_config"]["quant_method"] == "qbert"
    assert config["quantization_config"]["plan"] == results["quantization_map"]

    loaded = AutoModelForSequenceClassification.from_pretrained(folder / "model").eval()
    assert quantization_map(loaded) == results["quantization_map"]
    assert any(isinstance(m, QuantLinear) for m in loaded.modules())
    ours = build_task_model(run_cfg.model, run_cfg.task, vocab_size=len(build_tokenizer(run_cfg.model)))
    load_finetuned_(ours, folder)
    batch = _batch(run_cfg)
    with torch.no_grad():
        assert torch.equal(loaded(**batch).logits, ours.eval()(**batch).logits)

    # and again through save_pretrained: still the quantized model
    loaded.save_pretrained(tmp_path / "again")
    again = AutoModelForSequenceClassification.from_pretrained(tmp_path / "again").eval()
    with torch.no_grad():
        assert torch.equal(again(**batch).logits, ours(**batch).logits)


def test_the_loaded_model_reproduces_the_runs_metric(quantized_run, compose_cfg, tmp_path):
    folder, results, _ = quantized_run
    # evaluate what transformers loaded through the pipeline's own test loop
    loaded = AutoModelForSequenceClassification.from_pretrained(folder / "model")
    state = {k: v for k, v in loaded.state_dict().items()}
    saved = tmp_path / "via_hf"
    (saved / "model").mkdir(parents=True)
    from safetensors.torch import save_file
    save_file(state, str(saved / "model" / "model.safetensors"))
    (saved / "model" / "quantization_map.json").write_text(json.dumps(quantization_map(loaded)))
    again = run(compose_cfg(["task=sst2", *FAST, f"init_from={saved}", "eval_only=true"], output_dir=tmp_path / "e"))
    assert again["metrics"] == results["metrics"]


def test_without_qbert_transformers_refuses_instead_of_loading_floats(quantized_run):
    folder, _, _ = quantized_run
    code = ("import sys; from transformers import AutoModelForSequenceClassification as A; "
            f"A.from_pretrained({str(folder / 'model')!r}); print('LOADED')")
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode != 0 and "LOADED" not in done.stdout
    assert "qbert_bert" in done.stderr  # transformers names the unknown model type


def test_a_packed_model_refuses_save_pretrained(tmp_path):
    sys.path.insert(0, os.path.join(os.path.dirname(__file__), "export"))
    from export_testing import quantized_tiny
    from qbert.export import export_packed, load_packed

    path = export_packed(quantized_tiny("qbert_w4"), tmp_path / "w4.qbert.safetensors")
    packed = load_packed(path)
    with pytest.raises(ValueError, match="qbert_packed"):
        packed.save_pretrained(tmp_path / "saved")
    assert not (tmp_path / "saved" / "model.safetensors").exists()


def test_a_token_classification_run_loads_through_its_auto_class(compose_cfg, tmp_path):
    results = run(compose_cfg(["task=conll03", "quant=qbert", "quant.w_bits=4", *QUANT,
                               f"finetuned_dir={tmp_path / 'ft'}"], output_dir=tmp_path / "ner"))
    loaded = AutoModelForTokenClassification.from_pretrained(tmp_path / "ner" / "model")
    assert quantization_map(loaded) == results["quantization_map"]
