"""``qbert-export`` on a run's ``model/`` folder (as ``pipeline.save_model`` writes it)."""

from __future__ import annotations

import json
import sys

import pytest

from export_testing import quantized_tiny, run_folder
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


# -- --backend / --onnx (the onnxruntime side; the openvino side is in test_export_openvino.py) --

def _report(argv: list[str], path) -> dict:
    assert main([*argv, "--report", str(path)]) == 0
    return json.loads(path.read_text())


def test_backend_onnxruntime_is_the_onnx_option(tmp_path, capsys):
    pytest.importorskip("onnxruntime")
    from qbert.export.cli import DEFAULT_BACKEND

    run = run_folder(tmp_path / "run")
    by_onnx = _report([str(run), "--onnx", str(tmp_path / "a.onnx")], tmp_path / "a.json")
    out_onnx = capsys.readouterr().out
    by_backend = _report([str(run), "--backend", "onnxruntime", "--onnx", str(tmp_path / "b.onnx")], tmp_path / "b.json")
    assert DEFAULT_BACKEND == "onnxruntime" and by_onnx["backend"] == by_backend["backend"] == "onnxruntime"
    assert by_backend["backend_files"] == {str(tmp_path / "b.onnx"): (tmp_path / "b.onnx").stat().st_size}
    assert (tmp_path / "a.onnx").read_bytes() == (tmp_path / "b.onnx").read_bytes()
    assert by_onnx["backend_max_abs_logit_diff"] == by_backend["backend_max_abs_logit_diff"] <= 1e-3
    assert by_backend["onnx_max_abs_logit_diff"] == by_backend["backend_max_abs_logit_diff"]  # the key before --backend
    assert "ONNX Runtime vs loader logits" in out_onnx and "ONNX Runtime vs loader logits" in capsys.readouterr().out


def test_backend_alone_writes_the_default_onnx_file(tmp_path):
    pytest.importorskip("onnxruntime")
    run = run_folder(tmp_path / "run")
    rep = _report([str(run), "--backend", "onnxruntime", "--no-verify"], tmp_path / "r.json")
    assert list(rep["backend_files"]) == [str(run / "model.qbert.onnx")] and (run / "model.qbert.onnx").is_file()
    assert "backend_max_abs_logit_diff" not in rep


def test_without_a_backend_nothing_but_the_packed_file_is_written(tmp_path):
    run = run_folder(tmp_path / "run")
    rep = _report([str(run)], tmp_path / "r.json")
    assert "backend" not in rep and sorted(p.name for p in run.iterdir()) == ["model", "packed.qbert.safetensors"]


def test_an_unknown_backend_is_refused(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_:
        main([str(tmp_path), "--backend", "tensorrt"])
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and "--backend" in err and "onnxruntime" in err and "openvino" in err


@pytest.mark.parametrize("name", ["m.xml", "m.bin"])
def test_openvino_refuses_an_onnx_name_its_ir_would_overwrite(tmp_path, capsys, name):
    run = run_folder(tmp_path / "run")
    with pytest.raises(SystemExit) as exit_:
        main([str(run), "--backend", "openvino", "--onnx", str(tmp_path / name)])
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and err.startswith(f"qbert-export: error: --onnx {tmp_path / name}") and ".onnx" in err
    assert not (run / "packed.qbert.safetensors").exists()  # before any work


@pytest.mark.parametrize(("module", "argv", "extra"), [
    ("openvino", ["--backend", "openvino"], "qbert[openvino]"),
    ("onnxruntime", ["--backend", "onnxruntime"], "qbert[onnx]"),
    ("onnxruntime", ["--onnx"], "qbert[onnx]"),
])
def test_a_missing_runtime_stops_before_any_work(tmp_path, monkeypatch, capsys, module, argv, extra):
    run = run_folder(tmp_path / "run")
    monkeypatch.setitem(sys.modules, module, None)  # importing it raises ImportError, installed or not
    with pytest.raises(SystemExit) as exit_:
        main([str(run), *argv])
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and err.startswith(f"qbert-export: error: {' '.join(argv)}: ") and extra in err
    assert err.count("\n") == 1 and not (run / "packed.qbert.safetensors").exists()
