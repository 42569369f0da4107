"""Int8 attention matmuls in an exported QDQ graph, with post-training calibrated ranges.

qbert's int8 models (Q8BERT, Q-BERT) quantize the Linears' inputs; the two matmuls inside
each self-attention, the scores ``Q @ K^T`` and the context ``P @ V``, stay float, so a runtime
runs 12 of MiniLM's 48 matrix products in float. OpenVINO runs a ``MatMul`` whose two inputs
both come through a Q/DQ pair in int8, as it does for NNCF's own int8 models (which put
FakeQuantize on exactly these operands). ``quantize_attention_matmuls`` adds those pairs:

* the matmuls are found by shape, not by name: a ``MatMul`` neither of whose inputs is a
  weight (an initializer, a constant, or a ``DequantizeLinear`` of one);
* each input's range is calibrated: the graph is run in ONNX Runtime on the calibration
  batches with the operands as extra outputs, and the min and max over all of them kept;
* an operand never negative over calibration (the softmax probabilities) gets an unsigned grid,
  ``uint8`` with zero point 0 and step ``max / 255``; any other the symmetric ``int8`` grid with
  step ``max |x| / 127`` (``QuantizeLinear`` saturates, so values past the calibrated range clip).

This is a post-training step on top of the trained model, so it changes the logits (the QAT
model computed attention in float): its accuracy is measured, not assumed
(``experiments/bench_inference.py --attention-int8``). A model whose attention operands were
trained quantized (``quant.attention_operands``) already has these pairs, at its trained steps
(``onnx_export.OnnxOperand``); calibrating it again is refused.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any, Iterable

import numpy as np
from torch import Tensor

INT8_MAX, UINT8_MAX = 127.0, 255.0
MIN_STEP = 1e-12  # an operand that was 0 over all calibration keeps a usable step


def attention_matmuls(proto: Any) -> list[Any]:
    """The ``MatMul`` nodes of ``proto`` whose two inputs are both activations."""
    graph = proto.graph
    weights = {t.name for t in graph.initializer}
    producers = {o: n for n in graph.node for o in n.output}
    weights.update(o for n in graph.node if n.op_type == "Constant" for o in n.output)

    def is_weight(name: str) -> bool:
        node = producers.get(name)
        return name in weights or (node is not None and node.op_type == "DequantizeLinear" and node.input[0] in weights)

    return [n for n in graph.node if n.op_type == "MatMul" and not any(is_weight(i) for i in n.input)]


def operand_ranges(proto: Any, batches: Iterable[dict[str, Tensor]], names: list[str]) -> dict[str, tuple[float, float]]:
    """``{tensor name: (min, max)}`` of the graph's tensors ``names`` over ``batches``, run in
    ONNX Runtime with those tensors as extra graph outputs."""
    from qbert.export.onnx_runtime import with_outputs

    lo = dict.fromkeys(names, np.inf)
    hi = dict.fromkeys(names, -np.inf)
    seen = 0
    with tempfile.TemporaryDirectory() as tmp:
        probe = with_outputs(proto, names, Path(tmp) / "probe.onnx")
        for batch in batches:
            for name, value in probe.run(batch, names).items():
                lo[name], hi[name] = min(lo[name], float(value.min())), max(hi[name], float(value.max()))
            seen += 1
    if not seen:
        raise ValueError("calibrating the attention matmuls needs at least one batch")
    return {n: (lo[n], hi[n]) for n in names}


def operand_grid(lo: float, hi: float) -> tuple[float, bool]:
    """``(step, signed)`` of an operand's grid (zero point 0 either way) from its calibrated range."""
    if lo >= 0.0:
        return max(hi / UINT8_MAX, MIN_STEP), False
    return max(max(-lo, hi) / INT8_MAX, MIN_STEP), True


def quantize_attention_matmuls(proto: Any, batches: Iterable[dict[str, Tensor]]) -> dict[str, dict[str, Any]]:
    """Put a calibrated Q/DQ pair on both inputs of every attention matmul of ``proto`` (in place).
    Returns ``{operand tensor: {"min", "max", "step", "dtype"}}`` for the record; a ValueError when
    the graph has no attention matmul."""
    from onnx import helper, numpy_helper

    matmuls = attention_matmuls(proto)
    if not matmuls:
        raise ValueError("the graph has no MatMul with two activation inputs (no attention matmul to quantize)")
    operands = list(dict.fromkeys(i for n in matmuls for i in n.input))
    ranges = operand_ranges(proto, batches, operands)
    graph, record, pairs = proto.graph, {}, {}
    for name in operands:
        lo, hi = ranges[name]
        step, signed = operand_grid(lo, hi)
        dtype = np.int8 if signed else np.uint8
        base = f"{name}.attention_q"
        graph.initializer.extend([numpy_helper.from_array(np.array(step, dtype=np.float32), f"{base}.scale"),
                                  numpy_helper.from_array(np.array(0, dtype=dtype), f"{base}.zero_point")])
        pairs[name] = [
            helper.make_node("QuantizeLinear", [name, f"{base}.scale", f"{base}.zero_point"], [f"{base}.q"], name=f"{base}/quantize"),
            helper.make_node("DequantizeLinear", [f"{base}.q", f"{base}.scale", f"{base}.zero_point"], [f"{base}.dq"],
                             name=f"{base}/dequantize"),
        ]
        record[name] = {"min": lo, "max": hi, "step": step, "dtype": "int8" if signed else "uint8"}
    # each pair goes right before its matmul (after the operand's producer): the order stays topological
    targets = {n.output[0] for n in matmuls}
    nodes = []
    for node in graph.node:
        if node.output[0] in targets:
            for i, name in enumerate(node.input):
                nodes.extend(pairs.pop(name, ()))
                node.input[i] = f"{name}.attention_q.dq"
        nodes.append(node)
    copies = []
    for node in nodes:
        copies.append(type(node)())
        copies[-1].CopyFrom(node)
    del graph.node[:]
    graph.node.extend(copies)
    return record
