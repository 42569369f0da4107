"""Fake-quantized model -> packed file: the integer codes each quantized module computes with.

``export_packed(model, path)`` takes a model after ``quantize_`` (+ QAT or calibration) and
writes what its forward actually uses: ``Q(W)`` as integer codes + per-group steps, and the
frozen input qparams. ``load_run_model(run_dir)`` rebuilds such a model from a run folder
(``model/`` of ``pipeline.save_model``), the input of the ``qbert-export`` command.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from qbert.export.packed_file import operand_key, write_packed
from qbert.export.packing import pack, to_codes
from qbert.quant import FLOAT_BITS, QuantEmbedding, QuantLinear, compute_qparams, plan_from_dict, quantize_
from qbert.quant.attention import quantized_attentions
from qbert.quant.learned import LearnedActivationQuantizer, LearnedWeightQuantizer
from qbert.quant.primitives import MIN_SCALE, qrange
from qbert.quant.quantizers import ActivationQuantizer
from qbert.quant.surgery import quantization_map
from qbert.weights import load_weights_, read_quantization_map, read_safetensors

QUANTIZER_KEYS = ("weight_quantizer.", "input_quantizer.")


@torch.no_grad()
def weight_codes(m: QuantLinear | QuantEmbedding) -> tuple[Tensor, Tensor, Tensor | None]:
    """``(q int32 [rows, cols], scale fp32 [G], zero_point int32 [G] or None)`` of ``Q(W)``.

    Every weight grid packs exactly: a restricted symmetric grid ``[-(2^(b-1)-1), 2^(b-1)-1]``
    and a full one ``[-2^(b-1), 2^(b-1)-1]`` both become codes ``q + 2^(b-1)`` (no zero point:
    the full grid merely uses code 0 too), an asymmetric grid its own codes with the per-group
    zero points; an mse range is only another step per group."""
    wq, w = m.weight_quantizer, m.weight.detach().float()
    if isinstance(wq, LearnedWeightQuantizer):
        wg = w.reshape(wq.num_groups, -1, w.shape[-1])
        scale = wq.scale.detach().float().clamp(min=MIN_SCALE)
        qmin, qmax = qrange(wq.bits, True)
        q = torch.round((wg / scale).clamp(qmin, qmax)).to(torch.int32)
        return q.reshape(w.shape), scale.reshape(-1), None
    q, scale, zp = wq.quantize_int(w)
    return q, scale.reshape(-1).float(), None if wq.symmetric else zp.reshape(-1).to(torch.int32)


@torch.no_grad()
def learned_qparams(q: LearnedActivationQuantizer) -> Tensor:
    """A learned activation quantizer's frozen ``[step, offset]``."""
    if not bool(q.initialized):
        raise ValueError("a learned activation quantizer was never initialised (calibrate or train first)")
    # the offset it computes with: with integer zero points, -zero_point * step exactly
    return torch.stack([q.scale.detach().float().clamp(min=MIN_SCALE), q.effective_offset().detach().float()])


@torch.no_grad()
def input_qparams(m: QuantLinear) -> tuple[str | None, Tensor | None]:
    """The input quantizer's kind and its frozen ``[scale, zero_point or offset]``."""
    iq = m.input_quantizer
    if iq is None:
        return None, None
    if isinstance(iq, LearnedActivationQuantizer):
        return "learned", learned_qparams(iq)
    assert isinstance(iq, ActivationQuantizer)
    if iq.dynamic:
        return "dynamic", None
    if not bool(iq.initialized):
        raise ValueError("an input quantizer has observed no range (calibrate or train first)")
    scale, zp = compute_qparams(iq.running_min, iq.running_max, iq.bits, iq.symmetric)
    return "ema", torch.stack([scale.reshape(()), zp.reshape(()).float()])


def packed_tensors(model: nn.Module) -> tuple[dict[str, Tensor], dict[str, Any]]:
    """The tensors of the packed file and the ``modules`` metadata, from a quantized model."""
    quantized = {n: m for n, m in model.named_modules() if isinstance(m, (QuantLinear, QuantEmbedding))}
    if not quantized:
        raise ValueError("the model has no quantized module: nothing to pack (export a quantize_'d model)")
    tensors: dict[str, Tensor] = {}
    for key, t in model.state_dict().items():
        owner = next((n for n in quantized if key.startswith(n + ".")), None)
        rest = key[len(owner) + 1:] if owner else key
        if owner and (rest == "weight" or rest.startswith(QUANTIZER_KEYS)):
            continue  # replaced by the packed codes and qparams below
        if ".operand_quantizers." in key:
            continue  # the attention operands' frozen qparams, below
        tensors[key] = t.detach().float() if t.is_floating_point() else t.detach()
    for name in quantized_attentions(model):  # quant.attention_operands: Q, K, V and P at their steps
        for operand, q in model.get_submodule(name).operand_quantizers.items():
            tensors[operand_key(name, operand)] = learned_qparams(q)
    modules: dict[str, Any] = {}
    for name, m in quantized.items():
        spec, wq = m.spec, m.weight_quantizer
        info: dict[str, Any] = {"kind": "linear" if isinstance(m, QuantLinear) else "embedding",
                                "shape": list(m.weight.shape), "w_bits": spec.w_bits, "a_bits": spec.a_bits,
                                "symmetric": spec.symmetric, "input": None, "groups": 1,
                                "weight": "learned" if isinstance(wq, LearnedWeightQuantizer) else wq.range_method}
        if isinstance(m, QuantEmbedding):
            info["padding_idx"] = m.padding_idx
        if spec.w_bits == FLOAT_BITS:
            tensors[f"{name}.weight"] = m.weight.detach().float()
        else:
            q, scale, zp = weight_codes(m)
            sym = zp is None
            info.update(groups=scale.numel(), symmetric=sym)
            tensors[f"{name}.weight.packed"] = pack(to_codes(q, spec.w_bits, sym), spec.w_bits)
            tensors[f"{name}.weight.scale"] = scale
            if zp is not None:
                tensors[f"{name}.weight.zero_point"] = zp
        if isinstance(m, QuantLinear):
            kind, qp = input_qparams(m)
            info["input"] = kind
            info["input_symmetric"] = spec.symmetric
            if qp is not None:
                tensors[f"{name}.input.qparams"] = qp
        modules[name] = info
    return tensors, modules


def export_packed(model: nn.Module, path: str | Path) -> Path:
    """Write ``model`` (a ``quantize_``'d transformers model) as a packed file at ``path``."""
    tensors, modules = packed_tensors(model)
    # the architecture's own config: the plan is in the file already, and the packed model is
    # not the fake-quantized one a "qbert_bert" config with its quantization_config describes
    config = {k: v for k, v in model.config.to_dict().items() if k != "quantization_config"}
    if config.get("model_type") == "qbert_bert":
        config["model_type"] = "bert"
    return write_packed(path, tensors, type(model).__name__, config, quantization_map(model), modules)


def load_run_model(source: str | Path) -> nn.Module:
    """The fake-quantized model of a run folder (or its ``model/`` folder), in eval mode."""
    import transformers

    folder = Path(source)
    if (folder / "model" / "config.json").is_file():
        folder = folder / "model"
    qmap_path, weights = folder / "quantization_map.json", folder / "model.safetensors"
    for f in (folder / "config.json", weights, qmap_path):
        if not f.is_file():
            raise FileNotFoundError(f"{source}: no {f.name} (export needs a quantized run's model/ folder)")
    from qbert.hf import register
    register()  # a quantized run's config.json has qbert's model type
    config = transformers.AutoConfig.from_pretrained(folder)
    arch = (config.architectures or [None])[0]
    cls = getattr(transformers, arch, None) if arch else None
    if cls is None:
        raise ValueError(f"{folder}/config.json: unknown architecture {arch!r}")
    model = cls(config)
    quantize_(model, plan_from_dict(read_quantization_map(qmap_path)))
    load_weights_(model, read_safetensors(weights), f"{weights} (with its config and plan)")
    return model.eval()
