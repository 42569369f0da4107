"""Attention matmul operands trained quantized (MKQ's true W4A4, ``quant.attention_operands``)
in the packed file, the loader and the ONNX graph: exact against the fake-quantized model, each
operand's grid in the graph, and the refusals around them."""

from __future__ import annotations

import pytest
import torch
from onnx import TensorProto
from safetensors.torch import load_file

from export_testing import PLANS, batch, quantized_tiny
from qbert.export import export_packed, load_packed
from qbert.export.modules import PackedOperand
from qbert.export.onnx_export import export_onnx
from qbert.export.onnx_runtime import OnnxModel, with_outputs
from qbert.export.packed_file import PackedFileError, operand_key, write_packed, read_packed
from qbert.quant.attention import OPERANDS, quantized_attentions
from qbert.quant.bert_plans import mkq_plan
from qbert.quant.primitives import qrange

ATTENTION_PLANS = ("mkq_w4a4_attention", "mkq_w8a8_attention_sym")


@pytest.fixture(params=ATTENTION_PLANS)
def pair(request, tmp_path):
    model = quantized_tiny(request.param)
    return model, load_packed(export_packed(model, tmp_path / "m.qbert.safetensors"))


def test_the_loader_computes_the_quantized_attention_exactly(pair):
    model, loaded = pair
    names = quantized_attentions(model)
    assert names and quantized_attentions(loaded) == names
    for name in names:
        operands = loaded.get_submodule(name).operand_quantizers
        assert set(operands) == set(OPERANDS) and all(isinstance(q, PackedOperand) for q in operands.values())
        assert not operands["probs"].symmetric  # probabilities: the unsigned grid
    with torch.no_grad():
        for seed in (1, 2):
            torch.testing.assert_close(loaded(**batch(seed)).logits, model(**batch(seed)).logits, atol=0, rtol=0)


def test_the_onnx_graph_quantizes_each_operand_on_its_grid(pair, tmp_path):
    _, loaded = pair
    path = export_onnx(loaded, tmp_path / "m.onnx")
    session = OnnxModel(path)
    with torch.no_grad():
        ref = loaded(**batch(3)).logits
    assert float((session(**batch(3))["logits"] - ref).abs().max()) <= 1e-3
    names = [f"{a}.operand_quantizers.{o}" for a in quantized_attentions(loaded) for o in OPERANDS]
    outs = with_outputs(path, [f"{n}.q" for n in names], tmp_path / "debug.onnx").run(batch(3))
    for name in names:
        q = loaded.get_submodule(name)
        codes = outs[f"{name}.q"]
        qmin, qmax = qrange(q.bits, q.symmetric)
        # K and V are the second operands: signed int8 with zero point 0, as x86 int8 matmuls take them
        assert codes.dtype == (torch.int8 if q.symmetric else torch.uint8)
        assert qmin <= int(codes.min()) and int(codes.max()) <= qmax


def test_probabilities_with_an_offset_keep_it_in_the_graph(tmp_path):
    """A learned float offset (no integer zero points) is written around the Q/DQ pair, exactly."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setitem(PLANS, "offsets", lambda: mkq_plan(4, 4, 8, groups=4, attention_operands=True))
        model = quantized_tiny("offsets")
    loaded = load_packed(export_packed(model, tmp_path / "m.qbert.safetensors"))
    offsets = [float(m.qparams[1]) for m in loaded.modules() if isinstance(m, PackedOperand)]
    assert any(o != 0.0 for o in offsets)
    session = OnnxModel(export_onnx(loaded, tmp_path / "m.onnx"))
    with torch.no_grad():
        assert float((session(**batch(3))["logits"] - loaded(**batch(3)).logits).abs().max()) <= 1e-3


def test_a_missing_operand_tensor_is_named(tmp_path):
    model = quantized_tiny("mkq_w4a4_attention")
    path = export_packed(model, tmp_path / "m.qbert.safetensors")
    tensors, meta = read_packed(path)
    gone = operand_key(quantized_attentions(model)[0], "probs")
    del tensors[gone]
    write_packed(tmp_path / "broken.qbert.safetensors", tensors, meta["architecture"], meta["config"], meta["plan"],
                 meta["modules"])
    with pytest.raises(PackedFileError, match=f"tensor '{gone}'"):
        load_packed(tmp_path / "broken.qbert.safetensors")
    assert gone in load_file(str(path))  # the exporter wrote it


def test_calibrating_trained_operands_again_is_refused(pair, tmp_path):
    _, loaded = pair
    with pytest.raises(ValueError, match="trained quantized"):
        export_onnx(loaded, tmp_path / "m.onnx", [batch(4)])


def test_openvino_runs_the_trained_8_bit_attention(tmp_path):
    pytest.importorskip("openvino")
    from qbert.export.openvino_runtime import OpenVinoModel

    loaded = load_packed(export_packed(quantized_tiny("mkq_w8a8_attention_sym"), tmp_path / "m.qbert.safetensors"))
    ov = OpenVinoModel(export_onnx(loaded, tmp_path / "m.onnx"), threads=1)
    with torch.no_grad():
        assert float((ov(**batch(3))["logits"] - loaded(**batch(3)).logits).abs().max()) <= 1e-3
    assert ov.int8_layers()["FullyConnected"].get("u8") == 12  # every encoder Linear in int8


def test_the_command_refuses_to_calibrate_trained_operands(tmp_path, capsys):
    from export_testing import run_folder
    from qbert.export.cli import main

    run = run_folder(tmp_path / "run", "mkq_w8a8_attention_sym")
    with pytest.raises(SystemExit) as exit_:
        main([str(run), "--onnx", "--attention-int8"])
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and "trained quantized" in err and "packed.qbert.safetensors is written" in err
    assert main([str(run), "--onnx"]) == 0  # without it: the trained steps, checked against the loader


def test_the_float_copy_has_float_attention(pair):
    from qbert.export.int8_cpu import float_copy

    _, loaded = pair
    assert quantized_attentions(loaded) and not quantized_attentions(float_copy(loaded)[0])
    assert quantized_attentions(loaded)  # a copy: the packed model keeps them
