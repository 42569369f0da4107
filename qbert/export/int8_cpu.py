"""CPU int8 inference (W8A8) of a packed Q8BERT-style model: torchao's PT2E flow + Inductor.

Chosen by measurement (``experiments/bench_inference.py``; see ``experiments/README.md``):
``torch.export`` -> ``prepare_pt2e`` with torchao's ``X86InductorQuantizer`` (static: uint8
activations, int8 weights, oneDNN kernels using AVX512-VNNI / AMX-INT8) -> calibrate ->
``convert_pt2e`` -> ``torch.compile`` with Inductor freezing (weights prepacked once).

**The ranges learned in QAT are kept where the backend allows**:

* an input quantized in QAT with a symmetric 8-bit EMA range ``[-m, m]`` (step ``s = m/127``,
  grid ``k*s``, ``|k| <= 127``) becomes the uint8 quantizer ``(scale s, zero_point 128,
  quant_min 1)``, whose grid ``(u - 128)*s`` is the same set of points: the observer is
  replaced by a fixed one (``FixedQParamsObserver``); an asymmetric 8-bit EMA range (step
  ``s``, zero point ``z``, grid ``(u - z)*s``, ``0 <= u <= 255``, ``quant.a_range=ema_asym``) is
  already a uint8 quantizer and is taken as it is;
* a symmetric per-tensor 8-bit weight ``Q(W) = k*s_w`` is quantized by the backend's
  per-channel observer with every channel's step set to ``s_w``, so the int8 weight the kernel
  multiplies is exactly the exported code.

With both, the converted (reference q/dq) graph reproduces the fake-quantized model exactly
(max logit difference 0 on SST-2 dev batches of the Q8BERT MiniLM). The compiled graph runs
oneDNN's fused int8 kernels, whose numerics differ slightly (max logit difference 0.15 on the
same batch; 17 of 872 SST-2 dev predictions change), see ``experiments/README.md``.

Everything else the quantizer annotates (residual adds fused into the Linear, other inputs)
takes ranges from the calibration batches (real training sentences in the benchmark). Inputs
quantized per token (``quant.a_range=per_token*``) are refused: the backend's activation
quantizers are static and per tensor, so it would compute something else. The input: a model
from ``loader.load_packed`` (or any transformers model; ``qat_ranges=False`` then calibrates
everything).
"""

from __future__ import annotations

import copy
from typing import Any, Iterable

import torch
from torch import Tensor, nn

from qbert.export.modules import PackedEmbedding, PackedLinear
from qbert.quant.attention import restore_attention_
from qbert.quant.primitives import FLOAT_BITS
from qbert.weights import replace_module


def torchao_available() -> bool:
    try:
        import torchao.quantization.pt2e.quantizer.x86_inductor_quantizer  # noqa: F401
    except Exception:
        return False
    return True


InputQParams = tuple[float, int, int]  # (scale, zero_point, quant_min) of a uint8 quantizer


def float_copy(model: nn.Module) -> tuple[nn.Module, dict[str, InputQParams | None], dict[str, float | None]]:
    """A plain float copy (weights = the dequantized ``Q(W)``, no fake quantization) plus the
    QAT input quantizer per Linear (``(scale, zero_point, quant_min)`` in uint8 terms, None if
    not usable) and the per-tensor weight step (None if the weight is not symmetric per-tensor
    8-bit). Quantized attention operands (``quant.attention_operands``) go too: float attention."""
    model = restore_attention_(copy.deepcopy(model))
    inputs: dict[str, InputQParams | None] = {}
    weights: dict[str, float | None] = {}
    for name, m in list(model.named_modules()):
        if isinstance(m, PackedLinear):
            usable = m.input_kind == "ema" and m.a_bits == 8
            new: nn.Module = nn.Linear(m.in_features, m.out_features, m.bias is not None)
            with torch.no_grad():
                new.weight.copy_(m.dequantized_weight())
                if m.bias is not None:
                    new.bias.copy_(m.bias)
            # symmetric: quant_min=1, so the grid (u - 128) * s stops at -127 steps as the QAT grid
            qat = (float(m.input_qparams[0]), 128, 1) if m.input_symmetric else \
                (float(m.input_qparams[0]), int(m.input_qparams[1]), 0)
            inputs[name] = qat if usable else None
            per_tensor8 = m.w_bits == 8 and m.weight_scale.numel() == 1 and not bool(m.weight_zero_point.any())
            weights[name] = float(m.weight_scale[0]) if per_tensor8 else None
        elif isinstance(m, PackedEmbedding):
            new = nn.Embedding.from_pretrained(m.dequantized_weight(), freeze=True, padding_idx=m.padding_idx)
        else:
            continue
        replace_module(model, name, new)
    return model.eval(), inputs, weights


def _linear_observers(prepared: torch.fx.GraphModule) -> list[tuple[str, str | None, str | None]]:
    """``(module name, input observer, weight observer)`` of each linear in a prepared graph."""
    out = []
    for node in prepared.graph.nodes:
        if node.op != "call_function" or node.target not in (torch.ops.aten.linear.default,):
            continue
        x, w = node.args[0], node.args[1]
        obs_x = x.target if getattr(x, "op", None) == "call_module" else None
        obs_w, param = (w.target, w.args[0]) if getattr(w, "op", None) == "call_module" else (None, w)
        name = param.target.rsplit(".", 1)[0] if getattr(param, "op", None) == "get_attr" else None
        if name:
            out.append((name, obs_x, obs_w))
    return out


def set_qat_ranges_(prepared: torch.fx.GraphModule, inputs: dict, weights: dict) -> dict[str, int]:
    """Replace calibrated qparams by the QAT ones where they exist; returns what was set."""
    from torchao.quantization.pt2e.observer import FixedQParamsObserver

    done = {"inputs": 0, "weights": 0, "linears": 0}
    for name, obs_x, obs_w in _linear_observers(prepared):
        done["linears"] += 1
        if obs_x and inputs.get(name):
            scale, zp, quant_min = inputs[name]
            setattr(prepared, obs_x, FixedQParamsObserver(scale, zp, dtype=torch.uint8, quant_min=quant_min,
                                                          quant_max=255))
            done["inputs"] += 1
        if obs_w and weights.get(name):
            obs = getattr(prepared, obs_w)
            half = (obs.quant_max - obs.quant_min) / 2  # symmetric observers: scale = max|w| / half
            obs.min_val = torch.full_like(obs.min_val, -weights[name] * half)
            obs.max_val = torch.full_like(obs.max_val, weights[name] * half)
            done["weights"] += 1
    return done


def quantize_int8(model: nn.Module, example: dict[str, Tensor], calibration: Iterable[dict[str, Tensor]],
                  qat_ranges: bool = True) -> tuple[torch.fx.GraphModule, dict[str, Any]]:
    """The converted (reference-quantized) graph of ``model`` for ``example``'s shapes.

    ``calibration``: batches (same shapes as ``example``) the observers see; with
    ``qat_ranges`` the Linear inputs/weights then take the QAT ranges instead."""
    per_token = [n for n, m in model.named_modules() if isinstance(m, PackedLinear) and m.per_token]
    if per_token and qat_ranges:
        raise ValueError(f"{len(per_token)} Linear inputs are quantized per token (e.g. {per_token[0]}): the int8 "
                         "backend quantizes activations with static per-tensor ranges, so it cannot run this model "
                         "as trained; use the packed model itself (qbert.export.load_packed)")
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e
    from torchao.quantization.pt2e.quantizer import x86_inductor_quantizer as xiq

    fmodel, inputs, weights = float_copy(model)
    with torch.no_grad():
        exported = torch.export.export(fmodel, (), kwargs=example, strict=False).module()
        quantizer = xiq.X86InductorQuantizer().set_global(xiq.get_default_x86_inductor_quantization_config())
        if inputs:  # a packed model: Linears its plan kept float (pooler, task head) stay float
            for name, m in fmodel.named_modules():
                if isinstance(m, nn.Linear) and name not in inputs:
                    quantizer.set_module_name_qconfig(name, None)
        prepared = prepare_pt2e(exported, quantizer)
        n = 0
        for batch in calibration:
            prepared(**batch)
            n += 1
        info: dict[str, Any] = {"calibration_batches": n}
        if qat_ranges:
            info.update(set_qat_ranges_(prepared, inputs, weights))
        converted = convert_pt2e(prepared)
    return converted, info


def compile_int8(converted: torch.fx.GraphModule) -> Any:
    """Inductor with freezing (int8 weights prepacked for oneDNN)."""
    import torch._inductor.config as inductor_config

    inductor_config.freezing = True
    return torch.compile(converted)


def compile_fp32(model: nn.Module) -> Any:
    """The float comparison point: the same model compiled by Inductor (freezing on)."""
    import torch._inductor.config as inductor_config

    inductor_config.freezing = True
    return torch.compile(float_copy(model)[0] if any(isinstance(m, PackedLinear) for m in model.modules()) else model)


def int8_linear_count(model: nn.Module) -> int:
    return sum(isinstance(m, PackedLinear) and m.w_bits != FLOAT_BITS for m in model.modules())
