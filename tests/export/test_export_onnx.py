"""The QDQ ONNX export: ONNX Runtime loads it and reproduces the packed loader for every weight
width (8, 4, 3, 2), granularity (per tensor, per channel, 128 groups, groups = heads), grid
(restricted, full, asymmetric) and input kind (EMA, dynamic, learned); its integer tensors are
exactly the packed codes and qbert's quantized activations, element by element."""

from __future__ import annotations

import json
from pathlib import Path
from unittest.mock import patch

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, numpy_helper
from transformers import BertConfig, BertForSequenceClassification

import export_testing
from export_testing import TINY, batch, quantized_tiny, sst2_tiny_packed
from qbert.export import export_packed, load_packed
from qbert.export.cli import ONNX_TOLERANCE, main
from qbert.export.modules import PackedLinear
from qbert.export.onnx_export import SYMMETRIC_INPUT_OFFSET, export_onnx, input_code_offset
from qbert.export import onnx_runtime
from qbert.export.onnx_runtime import OnnxModel
from qbert.quant import calibration, q8bert_plan, qbert_plan, quantization_map, quantize_
from qbert.quant.primitives import FLOAT_BITS, compute_qparams, qrange, quantize, range_from_tensor

# hidden 256: 128 groups are 2 rows of an attention matrix, 4 of the FFN's (not per channel)
WIDE = dict(TINY, hidden_size=256, intermediate_size=512)
GRANULARITY = {
    "channel": dict(groups="channel"),
    "128_groups": dict(groups=128),
    "heads": dict(groups=128, heads_as_groups=True, num_heads=TINY["num_attention_heads"]),
}
WIDTHS = (8, 4, 3, 2)
TOLERANCE = 1e-3  # tiny models: far below the command's ONNX_TOLERANCE (a bound for real ones)
# the export tests' plans, and two input kinds they lack: 4-bit EMA inputs (clipped at -7, not
# int8's -128) and asymmetric per-batch ranges (a zero point computed in the graph)
PLANS = {**export_testing.PLANS,
         "qbert_w4a4_ema": lambda: qbert_plan(4, 8, 4, groups=16),
         "q8bert_dynamic_asym": lambda: [(p, s.replace(dynamic=True, symmetric=False)) for p, s in q8bert_plan()]}
WEIGHT_TYPE = {8: TensorProto.INT8, 4: TensorProto.INT4, 3: TensorProto.INT4, 2: TensorProto.INT2}
CONTAINER_BITS = {8: 8, 4: 4, 3: 4, 2: 2}


def grouped_tiny(bits: int, granularity: str, **kw) -> torch.nn.Module:
    torch.manual_seed(0)
    model = BertForSequenceClassification(BertConfig(**WIDE)).eval()
    quantize_(model, qbert_plan(bits, 8, 8, **GRANULARITY[granularity], **kw))
    with calibration(model), torch.no_grad():
        model(**batch(seed=7, size=8))
    return model


def exported(model: torch.nn.Module, tmp_path) -> tuple[torch.nn.Module, onnx.ModelProto, OnnxModel]:
    loaded = load_packed(export_packed(model, tmp_path / "m.qbert.safetensors"))
    path = export_onnx(loaded, tmp_path / "m.onnx")
    return loaded, onnx.load(str(path)), OnnxModel(path)


def assert_matches_loader(loaded, session: OnnxModel) -> None:
    for seed in (1, 2):
        b = batch(seed)
        with torch.no_grad():
            ref = loaded(**b).logits
        got = session(**b)["logits"]
        assert got.shape == ref.shape
        assert float((got - ref).abs().max()) <= TOLERANCE


def quantized_linears(loaded) -> dict[str, PackedLinear]:
    return {n: m for n, m in loaded.named_modules() if isinstance(m, PackedLinear) and m.w_bits != FLOAT_BITS}


def with_outputs(proto: onnx.ModelProto, names: list[str], tmp_path) -> OnnxModel:
    """The graph with intermediate tensors as outputs too."""
    return onnx_runtime.with_outputs(proto, names, tmp_path / "debug.onnx")


def input_chain_root(proto: onnx.ModelProto, module: str) -> str:
    """The float tensor that module's input quantization starts from."""
    producer = {o: n for n in proto.graph.node for o in n.output}
    q = next(n for n in proto.graph.node if n.name == f"{module}/input")
    first = producer[producer[q.input[0]].input[0]]  # QuantizeLinear <- Clip <- Mul (or Div)
    before = producer.get(first.input[0])
    offset = first.op_type == "Div" and before is not None and before.op_type == "Sub"  # Div <- Sub (an offset)
    return before.input[0] if offset else first.input[0]


def expected_input_codes(m: PackedLinear, x: torch.Tensor) -> torch.Tensor:
    """qbert's integer grid of the input ``x`` of ``m`` (what its fake quantization rounds to)."""
    if m.input_kind == "learned":
        qmin, qmax = qrange(m.a_bits, m.input_symmetric)
        return torch.round(((x - m.input_qparams[1]) / m.input_qparams[0]).clamp(qmin, qmax)).to(torch.int32)
    if m.input_kind == "dynamic":
        scale, zp = compute_qparams(*range_from_tensor(x, "minmax"), m.a_bits, m.input_symmetric)
    else:
        scale, zp = m.input_qparams[0], m.input_qparams[1].to(torch.int32)
    return quantize(x, scale, zp, m.a_bits, m.input_symmetric)


@pytest.mark.slow
@pytest.mark.parametrize("granularity", sorted(GRANULARITY))
@pytest.mark.parametrize("bits", WIDTHS)
def test_every_width_and_granularity_matches_the_loader(bits, granularity, tmp_path):
    loaded, proto, session = exported(grouped_tiny(bits, granularity), tmp_path)
    assert_matches_loader(loaded, session)
    linears = quantized_linears(loaded)
    inits = {t.name: t for t in proto.graph.initializer}
    for name, m in linears.items():
        codes = inits[f"{name}.weight.codes"]
        assert codes.data_type == WEIGHT_TYPE[bits] and list(codes.dims) == [m.in_features, m.out_features]
        assert len(codes.raw_data) == m.in_features * m.out_features * CONTAINER_BITS[bits] // 8  # packed bytes
        assert numpy_helper.to_array(inits[f"{name}.weight.scale"]).shape == (m.out_features,)
    assert proto.opset_import[0].version == (25 if bits == 2 else 21)
    # the dequantized weights ONNX Runtime computes are the loader's, bit for bit
    debug = with_outputs(proto, [n.output[0] for n in proto.graph.node if n.name.endswith("/weight")], tmp_path)
    outs = debug.run(batch(1))
    for node in (n for n in proto.graph.node if n.name.endswith("/weight")):
        module = node.name.rsplit("/", 1)[0]
        torch.testing.assert_close(outs[node.output[0]], linears[module].dequantized_weight().t(), atol=0, rtol=0)


def tiny(plan: str) -> torch.nn.Module:
    with patch.dict(export_testing.PLANS, PLANS):
        return quantized_tiny(plan)


@pytest.mark.parametrize("plan", sorted(PLANS))
def test_every_packed_plan_matches_the_loader(plan, tmp_path):
    """Per-tensor Q8BERT (EMA and dynamic inputs), asymmetric 3/2-bit weights, learned steps."""
    loaded, proto, session = exported(tiny(plan), tmp_path)
    assert_matches_loader(loaded, session)
    assert {n.domain for n in proto.graph.node} <= {"", "ai.onnx"}  # standard operators only
    inits = {t.name: t for t in proto.graph.initializer}
    for name, m in quantized_linears(loaded).items():  # raw bytes, at most one per code
        assert 0 < len(inits[f"{name}.weight.codes"].raw_data) <= m.in_features * m.out_features


@pytest.mark.parametrize("plan", sorted(PLANS))
def test_quantized_activations_are_qberts_codes_element_by_element(plan, tmp_path):
    loaded, proto, _ = exported(tiny(plan), tmp_path)
    linears = {n: m for n, m in quantized_linears(loaded).items() if m.input_kind is not None}
    roots = {n: input_chain_root(proto, n) for n in linears}
    debug = with_outputs(proto, [f"{n}.input.q" for n in linears] + sorted(set(roots.values())), tmp_path)
    outs = debug.run(batch(2))
    for name, m in linears.items():
        got = outs[f"{name}.input.q"]
        assert got.dtype == torch.uint8  # a symmetric grid shifted by 128: what x86 int8 kernels take
        codes = got.to(torch.int32) - input_code_offset(m)
        torch.testing.assert_close(codes, expected_input_codes(m, outs[roots[name]]), atol=0, rtol=0)


def test_symmetric_8_bit_inputs_stop_at_minus_127(tmp_path):
    """QuantizeLinear would saturate at -128; qbert's restricted grid stops at -127."""
    model = quantized_tiny("q8bert")
    name = "bert.encoder.layer.0.attention.self.query"
    iq = model.get_submodule(name).input_quantizer
    iq.running_min.mul_(0.05)  # a range 20x too narrow: most inputs saturate
    iq.running_max.mul_(0.05)
    loaded, proto, session = exported(model, tmp_path)
    root = input_chain_root(proto, name)
    outs = with_outputs(proto, [f"{name}.input.q", root], tmp_path).run(batch(1))
    got = outs[f"{name}.input.q"].to(torch.int32) - SYMMETRIC_INPUT_OFFSET
    assert int(got.min()) == -127 and int(got.max()) == 127 and int((got == -127).sum()) > 10
    torch.testing.assert_close(got, expected_input_codes(loaded.get_submodule(name), outs[root]), atol=0, rtol=0)
    assert_matches_loader(loaded, session)


def test_asymmetric_weights_keep_their_zero_points(tmp_path):
    loaded, proto, _ = exported(quantized_tiny("qbert_mp_asym"), tmp_path)
    inits = {t.name: t for t in proto.graph.initializer}
    for name, m in quantized_linears(loaded).items():
        zp = inits[f"{name}.weight.zero_point"]
        assert zp.data_type in (TensorProto.UINT4, TensorProto.UINT2)
        assert len(inits[f"{name}.weight.codes"].raw_data) <= m.in_features * m.out_features // 2
        rows = m.out_features // m.weight_zero_point.numel()
        np.testing.assert_array_equal(numpy_helper.to_array(zp).astype(np.int32),
                                      m.weight_zero_point.repeat_interleave(rows).numpy())


def test_export_refuses_a_model_that_is_not_packed(tmp_path):
    with pytest.raises(ValueError, match="packed model"):
        export_onnx(quantized_tiny("q8bert"), tmp_path / "m.onnx")


def test_export_refuses_a_per_batch_percentile_range(tmp_path):
    loaded = load_packed(export_packed(quantized_tiny("q8bert_dynamic"), tmp_path / "m.qbert.safetensors"))
    loaded.get_submodule("bert.encoder.layer.0.output.dense").range_method = "percentile"
    with pytest.raises(ValueError, match="layer.0.output.dense.*percentile"):
        export_onnx(loaded, tmp_path / "m.onnx")


def _run_folder(tmp_path):
    model = quantized_tiny("q8bert")
    folder = tmp_path / "run" / "model"
    model.save_pretrained(folder)
    (folder / "quantization_map.json").write_text(json.dumps(quantization_map(model)))
    return tmp_path / "run"


def test_cli_writes_and_checks_the_onnx_graph(tmp_path, capsys):
    _run_folder(tmp_path)
    assert main([str(tmp_path / "run"), "--onnx", "--report", str(tmp_path / "r.json")]) == 0
    rep = json.loads((tmp_path / "r.json").read_text())
    assert rep["onnx_file"] == str(tmp_path / "run" / "model.qbert.onnx")
    assert rep["onnx_max_abs_logit_diff"] <= TOLERANCE < ONNX_TOLERANCE
    assert "ONNX Runtime vs loader" in capsys.readouterr().out
    proto = onnx.load(str(tmp_path / "run" / "model.qbert.onnx"))
    onnx.checker.check_model(proto, full_check=True)
    assert {p.key: p.value for p in proto.metadata_props}["qbert.format"] == "qbert.onnx/1"


def test_cli_fails_when_onnx_runtime_disagrees(tmp_path, monkeypatch, capsys):
    import qbert.export.cli as cli

    monkeypatch.setattr(cli, "ONNX_TOLERANCE", -1.0)  # any difference, even 0, is too much
    assert main([str(_run_folder(tmp_path)), "--onnx"]) == 1
    assert "ONNX Runtime's logits differ from the loader's" in capsys.readouterr().err


def test_cli_names_the_missing_extra(tmp_path, monkeypatch, capsys):
    import qbert.export.onnx_runtime as onnx_runtime

    def missing():
        raise ImportError("the ONNX export needs onnx and onnxruntime (No module named 'onnx'): pip install 'qbert[onnx]'")
    monkeypatch.setattr(onnx_runtime, "require_onnx", missing)
    with pytest.raises(SystemExit) as exit_:
        main([str(_run_folder(tmp_path)), "--onnx"])
    assert exit_.value.code == 2 and "qbert[onnx]" in capsys.readouterr().err


def test_the_runtime_gap_trace_reads_every_layer_s_codes(tmp_path):
    """``experiments/trace_runtime_gap.py``: on a tiny model the codes of our graph in ONNX Runtime
    are the loader's (a rare one-step flip at most) and every quantized Linear is reported."""
    import os
    import subprocess
    import sys

    root = Path(__file__).resolve().parents[2]
    packed = sst2_tiny_packed(tmp_path / "tiny.qbert.safetensors")
    out = tmp_path / "trace.json"
    run = subprocess.run([sys.executable, str(root / "experiments" / "trace_runtime_gap.py"), "--packed", str(packed),
                          "--data", str(root / "qbert" / "data" / "sample"), "--sentences", "40", "--out", str(out)],
                         env=dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(root)), capture_output=True, text=True,
                         timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    result = json.loads(out.read_text())
    layers = result["layers"]
    assert len(layers) == 6 * TINY["num_hidden_layers"] and result["sentences"] == 40
    for name, c in layers.items():
        assert c["codes"] > 0 and c["max_steps"] <= 1 and c["fraction_differ"] <= 1e-3, (name, c)
    assert result["max_abs_logit_diff"] <= TOLERANCE
