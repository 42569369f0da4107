"""``qbert-export --backend auto``: the runtime measured fastest on a CPU like this one, chosen by
the CPU's flags and the model's widths, said and recorded."""

from __future__ import annotations

import json

import pytest

from export_testing import run_folder
from qbert.export.backend_choice import choose_backend, effective_flags
from qbert.export.cli import main

AMX = {"avx512f", "avx512_vnni", "avx512_bf16", "amx_tile", "amx_int8", "amx_bf16"}
VNNI_ONLY = {"avx2", "avx512f", "avx512_vnni", "avx512_bf16"}  # the brief's EPYC: measured with AMX capped off
AVX2 = {"avx2", "fma"}


@pytest.mark.parametrize("flags, has_int2, openvino_installed, expected", [
    (AMX, False, True, "openvino"),
    (AMX, True, True, "onnxruntime"),  # OpenVINO cannot read 2-bit weights
    (AMX, False, False, "onnxruntime"),
    (VNNI_ONLY, False, True, "openvino"),
    (VNNI_ONLY, True, True, "onnxruntime"),
    (VNNI_ONLY, False, False, "onnxruntime"),
    (AVX2, False, True, "onnxruntime"),
    (set(), False, True, "onnxruntime"),  # no /proc/cpuinfo
])
def test_the_choice_follows_the_measurements(flags, has_int2, openvino_installed, expected):
    backend, why = choose_backend(flags, has_int2, is_installed=lambda name: openvino_installed)
    assert backend == expected and why
    assert ("2-bit" in why) == (has_int2 and "avx512_vnni" in flags)
    assert ("not installed" in why) == (expected == "onnxruntime" and "avx512_vnni" in flags and not has_int2)
    assert ("emulated" in why) == ("avx512_vnni" in flags and "amx_int8" not in flags)


@pytest.mark.parametrize("cap, expected", [
    ("AVX512_CORE_BF16", VNNI_ONLY | {"avx512f"}),  # the benchmark's no-AMX run
    ("avx512_core_vnni", {"avx2", "avx512f", "avx512_vnni"}),  # oneDNN takes either case
    ("AVX2", {"avx2", "avx512f"}),
    ("ALL", AMX | {"avx2"}),
    ("NOT_AN_ISA", AMX | {"avx2"}),  # oneDNN ignores it, so does the choice
])
def test_a_onednn_isa_cap_removes_the_flags_it_excludes(cap, expected):
    flags = AMX | {"avx2"}
    assert effective_flags(flags, {"ONEDNN_MAX_CPU_ISA": cap}) == expected
    assert effective_flags(flags, {"DNNL_MAX_CPU_ISA": cap}) == expected
    assert effective_flags(flags, {}) == flags


def _auto(tmp_path, monkeypatch, flags, plan="q8bert") -> tuple[int, dict]:
    monkeypatch.setattr("qbert.precision.cpu_flags", lambda: flags)
    run = run_folder(tmp_path / "run", plan)
    code = main([str(run), "--backend", "auto", "--report", str(tmp_path / "r.json")])
    return code, json.loads((tmp_path / "r.json").read_text()) if code == 0 else {}


def test_auto_without_vnni_writes_and_checks_the_onnx_graph(tmp_path, monkeypatch, capsys):
    pytest.importorskip("onnxruntime")
    code, rep = _auto(tmp_path, monkeypatch, AVX2)
    assert code == 0 and rep["backend"] == "onnxruntime" and rep["backend_choice"]["backend"] == "onnxruntime"
    assert list(rep["backend_files"]) == [str(tmp_path / "run" / "model.qbert.onnx")]
    assert rep["backend_max_abs_logit_diff"] <= 1e-3
    assert "--backend auto: onnxruntime (this CPU has no AVX-512 VNNI" in capsys.readouterr().out


def test_auto_follows_a_onednn_isa_cap(tmp_path, monkeypatch, capsys):
    pytest.importorskip("onnxruntime")
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "AVX2")  # an AMX CPU whose kernels are held to AVX2
    code, rep = _auto(tmp_path, monkeypatch, AMX)
    assert code == 0 and rep["backend"] == "onnxruntime"
    assert "no AVX-512 VNNI" in rep["backend_choice"]["why"]


def test_auto_with_amx_writes_openvino_ir(tmp_path, monkeypatch):
    pytest.importorskip("openvino")
    pytest.importorskip("onnx")
    code, rep = _auto(tmp_path, monkeypatch, AMX)
    assert code == 0 and rep["backend"] == "openvino" and rep["backend_choice"]["backend"] == "openvino"
    assert (tmp_path / "run" / "model.qbert.xml").is_file()


def test_auto_with_amx_takes_onnx_runtime_for_2_bit_weights(tmp_path, monkeypatch, capsys):
    pytest.importorskip("openvino")
    pytest.importorskip("onnxruntime")
    code, rep = _auto(tmp_path, monkeypatch, AMX, plan="qbert_mp_asym")  # layers at 3 and 2 bits
    assert code == 0 and rep["backend"] == "onnxruntime"
    assert "2-bit weights" in rep["backend_choice"]["why"]
    assert not (tmp_path / "run" / "model.qbert.xml").exists()
