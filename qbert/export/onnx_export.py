"""Packed model -> standard QDQ ONNX graph that ONNX Runtime (or any ONNX backend) runs.

The input is a model from ``loader.load_packed``; its ``PackedLinear``/``PackedEmbedding``
modules are written with standard ONNX operators only, everything else (LayerNorms, GELU,
attention, the task head) by torch's TorchScript ONNX exporter.

**Weights** of a quantized Linear: ``DequantizeLinear(codes, scale, zero_point)`` feeding the
``MatMul``, the codes stored transposed ``[in, out]`` in the narrowest ONNX integer type that
holds the grid: int8 (8 bits; 5..7 too), int4 (4 and 3 bits: the 3-bit grid -4..3 / -3..3
lies inside int4's -8..7), int2 (2 bits, opset 25); uint8/uint4/uint2 with the per-group zero
points for an asymmetric grid. qbert's groups are contiguous rows (output channels), so one
step per group is written per axis (``axis=1``, the group's step repeated for each of its rows):
exact, and ``out`` floats where a block layout along the output axis (``block_size`` = rows per
group) would need ``in x groups`` of them. One group is per-tensor (a scalar step).

**Activations** (the Linear's input) reproduce qbert's fake quantization bit for bit.
qbert computes ``clamp(round(x * (1/s)) + z, qmin, qmax)`` with the *reciprocal* step and
a restricted symmetric grid ``[-127, 127]``; ``QuantizeLinear`` divides by its scale and
saturates to ``[-128, 127]``. So the graph is ``Mul(x, 1/s)`` -> ``Clip(qmin - z, qmax - z)``
-> ``QuantizeLinear(scale 1, zero_point z)`` -> uint8 -> ``DequantizeLinear(s, z)``: the
integer tensor is exactly qbert's grid, -127 included, and the dequantized value its
``(q - z) * s``. A symmetric grid is stored shifted, as uint8 with zero point 128
(``input_code_offset``): the same values, and the unsigned x signed operand pair that x86 int8
kernels (VNNI's ``vpdpbusd``) take directly; int8 activations cost OpenVINO a compensation pass
(measured: MiniLM's FFN input Linear 6.2 ms as int8 x int8, 5.2 ms as uint8 x int8, 32x128, 2
threads, AVX-512 VNNI). A learned (LSQ) input divides by its step
after subtracting the offset (as qbert does): ``Sub``, ``Div``, ``Clip``, Q/DQ, ``Add`` (no
``Sub``/``Add`` when the offset is 0).
A dynamic (per-batch minmax) input computes its step in the graph (``ReduceMax``/``ReduceMin``).

**Embeddings** gather int8/uint8 codes (one byte per code whatever the width) and
dequantize only the rows looked up, with the row's group step, as ``PackedEmbedding`` does.

Each integer tensor is named after its module: ``{m}.weight.codes``, ``{m}.weight.scale``,
``{m}.weight.zero_point``, and the quantized input ``{m}.input.q`` (which tests read back).
"""

from __future__ import annotations

import copy
import inspect
import io
import warnings
import weakref
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from qbert.export.modules import PackedEmbedding, PackedLinear, PackedOperand
from qbert.quant.primitives import FLOAT_BITS, MIN_SCALE, qrange
from qbert.weights import replace_module

OPSET = 21  # int4/uint4 QuantizeLinear/DequantizeLinear
OPSET_INT2 = 25  # int2/uint2 (ONNX Runtime >= 1.23 runs them); used only when a weight has 2 bits
FORMAT = "qbert.onnx/1"
TAG = "qbert_tag"  # a string attribute on the nodes we emit, read and removed after export
INPUTS = ("input_ids", "attention_mask", "token_type_ids")


def _const(g, value: Tensor):
    return g.op("Constant", value_t=value)


def _f32(value: float | Tensor) -> Tensor:
    return torch.as_tensor(value, dtype=torch.float32).reshape(())


SYMMETRIC_INPUT_OFFSET = 128  # a symmetric input grid's codes are stored + 128, as uint8


def input_code_offset(packed: PackedLinear) -> int:
    """What the graph adds to ``packed``'s input grid to store it as uint8 (its ``{m}.input.q``
    minus this is qbert's integer code)."""
    return SYMMETRIC_INPUT_OFFSET if packed.input_symmetric else 0


def _input_zero_point(value: int) -> Tensor:
    """An activation's zero point: always uint8 (a symmetric grid's codes shifted into it)."""
    return torch.tensor(value, dtype=torch.uint8)


def _learned_qdq(g, x, step: Tensor, offset: Tensor, qmin: int, qmax: int, zp_q, tag: str):
    """A frozen learned quantizer, ``round(clamp((x - offset) / step)) * step + offset``: ``Div``,
    Clip, Q/DQ, with ``Sub``/``Add`` of the offset around them unless it is 0 (then the Q/DQ pair
    feeds the consumer directly, the pattern int8 runtimes fuse)."""
    shifted = float(offset) != 0.0
    y = g.op("Div", g.op("Sub", x, _const(g, offset)) if shifted else x, _const(g, step))
    dq = _grid_qdq(g, y, _const(g, _f32(qmin)), _const(g, _f32(qmax)), zp_q, _const(g, step), tag)
    return g.op("Add", dq, _const(g, offset)) if shifted else dq


def _grid_qdq(g, y, lo, hi, zp_q, scale_dq, tag: str):
    """``y`` (already ``x / s`` on the integer axis) -> Clip -> Q(1, zp) -> DQ(s, zp)."""
    clipped = g.op("Clip", y, lo, hi)
    q = g.op("QuantizeLinear", clipped, _const(g, _f32(1.0)), zp_q, qbert_tag_s=tag)
    return g.op("DequantizeLinear", q, scale_dq, zp_q)


# The tracer takes only tensors and plain values as a Function's arguments: modules are found
# by a key, the module's id (unique while it lives; weak, so the registry keeps nothing alive).
_LINEARS: "weakref.WeakValueDictionary[int, OnnxLinear]" = weakref.WeakValueDictionary()


class _QuantLinearOp(torch.autograd.Function):
    """Eager: the packed Linear itself. Export: its QDQ subgraph (``OnnxLinear.emit``)."""

    @staticmethod
    def forward(ctx, x: Tensor, key: int) -> Tensor:
        packed = _LINEARS[key].packed
        if torch.jit.is_tracing():  # the tracer cannot nest fake_quantize's own Function; the symbolic
            return x.new_empty(*x.shape[:-1], packed.out_features)  # below is what the graph holds
        return packed.forward(x)

    @staticmethod
    def symbolic(g, x, key: int):
        return _LINEARS[key].emit(g, x)


class OnnxLinear(nn.Module):
    """Holds a ``PackedLinear`` and writes it as ONNX operators."""

    def __init__(self, name: str, packed: PackedLinear) -> None:
        super().__init__()
        if packed.input_kind == "dynamic" and packed.range_method != "minmax":
            raise ValueError(f"{name}: a dynamic input with a {packed.range_method!r} range has no ONNX form "
                             "here (only minmax per-batch ranges are exported)")
        self.name, self.packed = name, packed
        _LINEARS[id(self)] = self

    def forward(self, x: Tensor) -> Tensor:
        return _QuantLinearOp.apply(x, id(self))

    # -- export ----------------------------------------------------------------------------
    def emit(self, g, x):
        out = g.op("MatMul", self._input(g, x), self._weight(g))
        return out if self.packed.bias is None else g.op("Add", out, _const(g, self.packed.bias.detach().float()))

    def _input(self, g, x):
        p, tag = self.packed, f"{self.name}|input"
        if p.input_kind is None:
            return x
        qmin, qmax = qrange(p.a_bits, p.input_symmetric)
        shift = input_code_offset(p)  # the stored codes are the grid's + shift (uint8 either way)
        if p.input_kind == "learned":
            step, offset = (_f32(v) for v in p.input_qparams)
            return _learned_qdq(g, x, step, offset, qmin, qmax, _const(g, _input_zero_point(shift)), tag)
        if p.input_kind == "ema":
            scale, z = _f32(p.input_qparams[0]), int(p.input_qparams[1])
            y = g.op("Mul", x, _const(g, 1.0 / scale))  # float32 reciprocal, as fake_quantize takes it
            lo, hi = _const(g, _f32(qmin - z)), _const(g, _f32(qmax - z))
            return _grid_qdq(g, y, lo, hi, _const(g, _input_zero_point(z + shift)), _const(g, scale), tag)
        return self._dynamic_input(g, x, qmin, qmax, p.input_symmetric, tag)

    def _dynamic_input(self, g, x, qmin: int, qmax: int, signed: bool, tag: str):
        """The per-batch minmax range of ``compute_qparams``, computed in the graph."""
        floor = _const(g, _f32(MIN_SCALE))
        if signed:
            scale = g.op("Div", g.op("ReduceMax", g.op("Abs", x), keepdims_i=0), _const(g, _f32(qmax)))
            scale = g.op("Max", scale, floor)
            zp_f, zp_q = _const(g, _f32(0.0)), _const(g, _input_zero_point(SYMMETRIC_INPUT_OFFSET))
        else:
            lo = g.op("Min", g.op("ReduceMin", x, keepdims_i=0), _const(g, _f32(0.0)))
            hi = g.op("Max", g.op("ReduceMax", x, keepdims_i=0), _const(g, _f32(0.0)))
            scale = g.op("Max", g.op("Div", g.op("Sub", hi, lo), _const(g, _f32(qmax - qmin))), floor)
            zp_f = g.op("Clip", g.op("Sub", _const(g, _f32(qmin)), g.op("Round", g.op("Div", lo, scale))),
                        _const(g, _f32(qmin)), _const(g, _f32(qmax)))
            zp_q = g.op("Cast", zp_f, to_i=2)  # uint8
        y = g.op("Mul", x, g.op("Reciprocal", scale))
        lo_b, hi_b = g.op("Sub", _const(g, _f32(qmin)), zp_f), g.op("Sub", _const(g, _f32(qmax)), zp_f)
        return _grid_qdq(g, y, lo_b, hi_b, zp_q, scale, tag)

    def _weight(self, g):
        p = self.packed
        if p.w_bits == FLOAT_BITS:
            return _const(g, p.weight.detach().float().t().contiguous())
        codes = p.qweight.t().contiguous()  # int8 (symmetric) or uint8 (asymmetric), [in, out]
        groups = p.weight_scale.numel()
        if groups == 1:
            scale, zp, axis = p.weight_scale.reshape(()), p.weight_zero_point.reshape(()), {}
        else:
            rows = p.out_features // groups
            scale = p.weight_scale.repeat_interleave(rows)
            zp, axis = p.weight_zero_point.repeat_interleave(rows), {"axis_i": 1}
        zp = zp.to(codes.dtype)
        return g.op("DequantizeLinear", _const(g, codes), _const(g, scale.float()), _const(g, zp),
                    qbert_tag_s=f"{self.name}|weight|{p.w_bits}", **axis)


_OPERANDS: "weakref.WeakValueDictionary[int, OnnxOperand]" = weakref.WeakValueDictionary()


class _OperandOp(torch.autograd.Function):
    """Eager: the packed operand quantizer. Export: its Q/DQ pair (``OnnxOperand.emit``)."""

    @staticmethod
    def forward(ctx, x: Tensor, key: int) -> Tensor:
        if torch.jit.is_tracing():  # as _QuantLinearOp: the graph holds the symbolic below
            return torch.empty_like(x)
        return _OPERANDS[key].packed(x)

    @staticmethod
    def symbolic(g, x, key: int):
        return _OPERANDS[key].emit(g, x)


class OnnxOperand(nn.Module):
    """An attention matmul operand at its trained step (``PackedOperand``), written as
    ``Div(step) -> Clip -> QuantizeLinear(1, zp) -> DequantizeLinear(step, zp)`` (``Sub``/``Add``
    of the offset around it when the offset is not 0). Unlike a Linear's input, a symmetric
    operand stays int8 with zero point 0: K and V are the matmuls' second operands, which x86
    int8 kernels take signed (as OpenVINO runs NNCF's attention: Q.K^T int8 x int8, P.V uint8 x int8)."""

    def __init__(self, name: str, packed: PackedOperand) -> None:
        super().__init__()
        self.name, self.packed = name, packed
        _OPERANDS[id(self)] = self

    def forward(self, x: Tensor) -> Tensor:
        return _OperandOp.apply(x, id(self))

    def emit(self, g, x):
        p = self.packed
        qmin, qmax = qrange(p.bits, p.symmetric)
        step, offset = (_f32(v) for v in p.qparams)
        zp = _const(g, torch.tensor(0, dtype=torch.int8 if p.symmetric else torch.uint8))
        return _learned_qdq(g, x, step, offset, qmin, qmax, zp, f"{self.name}|operand")


class OnnxEmbedding(nn.Module):
    """Gathers the codes and dequantizes the rows looked up (traced: Gather, Cast, Sub, Mul)."""

    def __init__(self, packed: PackedEmbedding) -> None:
        super().__init__()
        rows = packed.num_embeddings // packed.weight_scale.numel()
        self.register_buffer("codes", packed.qweight.clone())
        self.register_buffer("row_scale", packed.weight_scale.repeat_interleave(rows).float().unsqueeze(-1))
        self.register_buffer("row_zero_point", packed.weight_zero_point.repeat_interleave(rows).float().unsqueeze(-1))
        self.padding_idx = packed.padding_idx

    def forward(self, ids: Tensor) -> Tensor:
        return (self.codes[ids].float() - self.row_zero_point[ids]) * self.row_scale[ids]


def onnx_ready(model: nn.Module) -> nn.Module:
    """A copy of a packed model with every packed module replaced by its ONNX-writing twin."""
    model = copy.deepcopy(model)
    for name, m in list(model.named_modules()):
        if isinstance(m, PackedLinear):
            replace_module(model, name, OnnxLinear(name, m))
        elif isinstance(m, PackedEmbedding):
            replace_module(model, name, OnnxEmbedding(m))
        elif isinstance(m, PackedOperand):
            replace_module(model, name, OnnxOperand(name, m))
    return model.eval()


def model_inputs(model: nn.Module) -> tuple[str, ...]:
    """The graph's inputs: those of ``INPUTS`` the model's forward takes."""
    params = inspect.signature(model.forward).parameters
    return tuple(n for n in INPUTS if n in params)


def example_batch(model: nn.Module, size: int = 2, seq: int = 8) -> dict[str, Tensor]:
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, model.config.vocab_size, (size, seq), generator=g)
    batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "token_type_ids": torch.zeros_like(ids)}
    batch["attention_mask"][0, seq // 2:] = 0
    return {k: batch[k] for k in model_inputs(model)}


def export_onnx(model: nn.Module, path: str | Path, attention_calibration: list[dict[str, Tensor]] | None = None,
                record: dict | None = None) -> Path:
    """Write a packed model (``load_packed``) as a QDQ ONNX file at ``path``. With
    ``attention_calibration`` (batches of model inputs) the attention matmuls' operands are
    quantized to int8 too, with ranges calibrated on those batches (``attention_int8``); their
    ranges and steps go into ``record["operands"]`` when a ``record`` dict is given."""
    import onnx

    if not any(isinstance(m, (PackedLinear, PackedEmbedding)) for m in model.modules()):
        raise ValueError("export_onnx takes a packed model (qbert.export.load_packed): it has no packed module")
    if attention_calibration is not None and any(isinstance(m, PackedOperand) for m in model.modules()):
        raise ValueError("the model's attention matmul operands were trained quantized (quant.attention_operands): "
                         "they are written at their trained steps, not calibrated again (no --attention-int8)")
    ready = onnx_ready(model)
    example = example_batch(ready)
    with torch.no_grad():
        outputs = [k for k, v in ready(**example).items() if isinstance(v, Tensor)]
    names = list(example)
    axes = {n: {0: "batch", 1: "sequence"} for n in names}
    axes.update({n: {0: "batch"} for n in outputs})
    buffer = io.BytesIO()
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation and opset notes
        torch.onnx.export(ready, (), buffer, kwargs=example, input_names=names, output_names=outputs,
                          dynamic_axes=axes, opset_version=OPSET, dynamo=False, do_constant_folding=True)
    proto = onnx.load_from_string(buffer.getvalue())
    finish_graph(proto)
    if attention_calibration is not None:
        from qbert.export.attention_int8 import quantize_attention_matmuls

        operands = quantize_attention_matmuls(proto, attention_calibration)
        if record is not None:
            record["operands"] = operands
    onnx.checker.check_model(proto, full_check=True)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(proto, str(path))
    return path


# -- after the exporter: narrow integer types, names, opset ---------------------------------

def _narrow(bits: int, signed: bool) -> str:
    """The ml_dtypes / numpy type name of the narrowest ONNX integer type holding the grid."""
    size = 2 if bits <= 2 else 4 if bits <= 4 else 8
    return f"{'' if signed else 'u'}int{size}"


def finish_graph(proto: Any) -> None:
    """Move our tagged nodes' constants into named initializers of their ONNX integer type,
    name the quantized inputs ``{m}.input.q``, remove the tags, set the opset."""
    import ml_dtypes
    from onnx import helper, numpy_helper

    graph = proto.graph
    constants = {n.output[0]: n for n in graph.node if n.op_type == "Constant"}
    initializers = {t.name: t for t in graph.initializer}

    def value(name: str):
        if name in constants:
            return numpy_helper.to_array(constants[name].attribute[0].t)
        return numpy_helper.to_array(initializers[name])

    renames: dict[str, str] = {}
    new_inits, widest = [], 0
    for node in graph.node:
        tag = next((a for a in node.attribute if a.name == TAG), None)
        if tag is None:
            continue
        node.attribute.remove(tag)
        module, role, *rest = tag.s.decode().split("|")
        node.name = f"{module}/{role}"
        if role == "input":
            renames[node.output[0]] = f"{module}.input.q"
            continue
        if role == "operand":  # an attention operand, module {attention}.operand_quantizers.{name}
            renames[node.output[0]] = f"{module}.q"
            continue
        bits = int(rest[0])
        codes, scale, zp = (value(i) for i in node.input)
        dtype = _narrow(bits, codes.dtype.kind == "i")
        widest = max(widest, OPSET_INT2 if bits <= 2 else OPSET)
        for i, (suffix, arr, kind) in enumerate((("codes", codes, dtype), ("scale", scale, None), ("zero_point", zp, dtype))):
            name = f"{module}.weight.{suffix}"
            if kind is not None:  # raw bytes, int4/int2 two/four codes a byte (ml_dtypes types)
                arr = arr.astype(kind if kind.endswith("8") else getattr(ml_dtypes, kind))
            new_inits.append(numpy_helper.from_array(arr, name))
            node.input[i] = name
    graph.initializer.extend(new_inits)
    for node in graph.node:  # the quantized inputs take their module's name
        for seq in (node.input, node.output):
            for i, n in enumerate(seq):
                if n in renames:
                    seq[i] = renames[n]
    used = {i for n in graph.node for i in n.input}
    for node in [n for n in graph.node if n.op_type == "Constant" and n.output[0] not in used]:
        graph.node.remove(node)
    for init in [t for t in graph.initializer if t.name not in used]:
        graph.initializer.remove(init)
    if widest == OPSET_INT2:
        for op in proto.opset_import:
            if op.domain in ("", "ai.onnx"):
                op.version = OPSET_INT2
        proto.ir_version = max(proto.ir_version, 11)  # int2/uint2 need IR 11
    helper.set_model_props(proto, {"qbert.format": FORMAT})
