"""``qbert-export`` on a run's ``model/`` folder (as ``pipeline.save_model`` writes it)."""

from __future__ import annotations

import json

import pytest

from export_testing import quantized_tiny
from qbert.export.cli import main
from qbert.quant import quantization_map


def test_cli_packs_verifies_and_reports(tmp_path, capsys):
    model = quantized_tiny("qbert_w4")
    folder = tmp_path / "run" / "model"
    model.save_pretrained(folder)
    (folder / "quantization_map.json").write_text(json.dumps(quantization_map(model)))
    assert main([str(tmp_path / "run"), "--report", str(tmp_path / "size.json")]) == 0
    assert (tmp_path / "run" / "packed.qbert.safetensors").is_file()
    rep = json.loads((tmp_path / "size.json").read_text())
    assert rep["verify_max_abs_logit_diff"] < 1e-5
    assert rep["sections"]["encoder"]["file_vs_accounted"] == pytest.approx(1.0, abs=0.02)
    assert "encoder" in capsys.readouterr().out


def test_cli_refuses_a_float_run(tmp_path):
    from transformers import BertConfig, BertForSequenceClassification

    from export_testing import TINY

    BertForSequenceClassification(BertConfig(**TINY)).save_pretrained(tmp_path / "model")
    with pytest.raises(SystemExit) as exit_:
        main([str(tmp_path)])
    assert exit_.value.code == 2


@pytest.mark.parametrize(("damage", "file"), [
    (lambda m: (m / "model.safetensors").write_bytes((m / "model.safetensors").read_bytes()[:1000]), "model.safetensors"),
    (lambda m: (m / "quantization_map.json").write_text("{"), "quantization_map.json"),
    (lambda m: (m / "quantization_map.json").write_text("[]"), "quantization_map.json"),
    (lambda m: (m / "quantization_map.json").unlink(), "quantization_map.json"),
])
def test_cli_names_a_damaged_or_missing_file_in_one_line(tmp_path, capsys, damage, file):
    model = quantized_tiny("qbert_w4")
    folder = tmp_path / "run" / "model"
    model.save_pretrained(folder)
    (folder / "quantization_map.json").write_text(json.dumps(quantization_map(model)))
    damage(folder)
    with pytest.raises(SystemExit) as exit_:
        main([str(tmp_path / "run")])
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and err.startswith("qbert-export: error: ") and file in err
    assert "Traceback" not in err and not (tmp_path / "run" / "packed.qbert.safetensors").exists()
