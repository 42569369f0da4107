"""Quantized attention matmuls: MKQ-BERT's true W4A4 (``QuantSpec.attn_operands``).

The Linear input quantizers leave the two matmuls inside self-attention in float: the scores
``Q @ K^T`` and the context ``P @ V``. With ``attn_operands`` on the query, key and value
projections of a self-attention, ``quantize_`` also quantizes those four operands at the
projections' ``a_bits``, each with its own learned per-tensor step (LSQ, initialised from
calibration data like a Linear input):

* ``Q``, ``K``, ``V``: the projections' outputs (bias included), with the projections' input
  symmetry and zero-point rule;
* ``P``, the softmax probabilities, on an unsigned grid ``[0, 2^b - 1]`` (they are never
  negative, so a symmetric grid would waste its sign bit), before attention dropout.

How: the self-attention module (``BertSelfAttention`` and its look-alikes) gets the quantizers
as ``operand_quantizers`` and its class is swapped for a subclass whose ``forward`` is the eager
attention with the operands quantized; ``dequantize_`` swaps it back. The state dict keeps every
key it had and adds ``...attention.self.operand_quantizers.{query,key,value,probs}.*``. The
forward computes attention itself (the mask may be SDPA's boolean one or eager's additive one),
so it needs no ``attn_implementation`` switch, and ``output_attentions`` returns the float
probabilities the quantizer sees (as ``output_hidden_states`` returns activations before the
next Linear quantizes them), with the same dropout mask as the quantized ones.
"""

from __future__ import annotations

from typing import Mapping

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from qbert.quant.learned import LearnedActivationQuantizer
from qbert.quant.plan import QuantSpec

OPERANDS = ("query", "key", "value", "probs")
PROJECTIONS = ("query", "key", "value")
# what the quantizers must agree on across a self-attention's three projections
_SHARED = ("a_bits", "symmetric", "learned", "integer_zero_point")


class QuantizedMatmulAttention(nn.Module):
    """Mixin over a self-attention class (see the module docstring); ``float_class`` is the
    class it was swapped in for."""

    float_class: type[nn.Module]
    operand_quantizers: nn.ModuleDict

    def forward(self, hidden_states: Tensor, attention_mask: Tensor | None = None, cache=None, **kwargs):
        if cache is not None or getattr(self, "is_decoder", False):
            raise NotImplementedError("quantized attention matmuls are implemented for encoders (no cache) only")
        quant = self.operand_quantizers
        input_shape = hidden_states.shape[:-1]
        heads = (*input_shape, -1, self.attention_head_size)
        q, k, v = (getattr(self, n)(hidden_states).view(heads).transpose(1, 2) for n in PROJECTIONS)
        # each quantized where its matmul reads it (per-tensor, so the same values as before the
        # heads' reshape): an exported Q/DQ pair then feeds the MatMul directly, the pattern int8
        # runtimes fuse (ONNX Runtime 1.32 mis-types a DQ moved past a Reshape: issue 27845)
        q, k_t, v = quant["query"](q), quant["key"](k.transpose(2, 3)), quant["value"](v)
        scores = torch.matmul(q, k_t) * self.scaling
        if attention_mask is not None:
            if attention_mask.dtype == torch.bool:  # SDPA's mask: True = attend
                scores = scores.masked_fill(~attention_mask, torch.finfo(scores.dtype).min)
            else:  # eager's additive mask
                scores = scores + attention_mask
        probs = F.softmax(scores, dim=-1)
        quantized = quant["probs"](probs)
        if self.training and self.dropout.p > 0:  # one dropout mask for both
            keep = self.dropout(torch.ones_like(probs))
            probs, quantized = probs * keep, quantized * keep
        context = torch.matmul(quantized, v).transpose(1, 2).reshape(*input_shape, -1).contiguous()
        return context, probs


def operand_symmetric(operand: str, symmetric: bool) -> bool:
    """Whether ``operand``'s grid is symmetric, for projections quantized with ``symmetric``:
    the probabilities are never negative, so they always take the unsigned grid."""
    return symmetric and operand != "probs"


_CLASSES: dict[type, type] = {}


def _quantized_class(cls: type[nn.Module]) -> type[nn.Module]:
    if cls not in _CLASSES:
        _CLASSES[cls] = type(f"MatmulQuantized{cls.__name__}", (QuantizedMatmulAttention, cls), {"float_class": cls})
    return _CLASSES[cls]


def attention_operand_specs(model: nn.Module, linear_specs: Mapping[str, QuantSpec]) -> dict[str, QuantSpec]:
    """``{self-attention name: the shared spec}`` of the attentions whose projections ask for
    quantized operands, from ``{Linear name: spec}`` (before any module is replaced); a
    ``ValueError`` when only some of the three ask, or they disagree."""
    parents = {n.rpartition(".")[0] for n, s in linear_specs.items() if s.attn_operands}
    found = {}
    for name in sorted(parents):
        specs = [linear_specs.get(f"{name}.{p}") for p in PROJECTIONS]
        asking = [s is not None and s.attn_operands for s in specs]
        if not all(asking):
            raise ValueError(f"{name}: attn_operands is set on {[p for p, a in zip(PROJECTIONS, asking) if a]} only; "
                             "the attention matmuls need it on query, key and value alike")
        shared = [{f: getattr(s, f) for f in _SHARED} for s in specs]
        if any(s != shared[0] for s in shared):
            raise ValueError(f"{name}: query, key and value quantize their outputs differently ({shared}); "
                             f"the attention operands need one setting of {list(_SHARED)}")
        m = model.get_submodule(name)
        if isinstance(m, QuantizedMatmulAttention):
            raise ValueError(f"{name}: its attention matmuls are already quantized (call dequantize_ first)")
        if not all(hasattr(m, a) for a in ("attention_head_size", "scaling", "dropout")):
            raise TypeError(f"{name}: a {type(m).__name__} is not a BERT-style self-attention "
                            "(attention_head_size, scaling, dropout): its matmuls cannot be quantized")
        found[name] = specs[0]
    return found


def quantize_attention_operands_(model: nn.Module, attentions: Mapping[str, QuantSpec]) -> nn.Module:
    """Quantize the matmul operands of the self-attentions ``attention_operand_specs`` found."""
    for name, spec in attentions.items():
        m = model.get_submodule(name)
        device = m.query.weight.device

        def quantizer(symmetric: bool) -> LearnedActivationQuantizer:
            return LearnedActivationQuantizer(spec.a_bits, symmetric, spec.learned, device,
                                              integer_zero_point=spec.integer_zero_point)

        quantize_matmuls_with_(m, {n: quantizer(operand_symmetric(n, spec.symmetric)) for n in OPERANDS})
    return model


def quantize_matmuls_with_(attention: nn.Module, quantizers: Mapping[str, nn.Module]) -> nn.Module:
    """Give a BERT-style self-attention ``quantizers`` (one module per name of ``OPERANDS``,
    each mapping a tensor to its quantized value) and swap its class for the quantized-matmul
    one. Also how a packed model rebuilds its frozen operands (``qbert.export.loader``)."""
    if set(quantizers) != set(OPERANDS):
        raise ValueError(f"attention operand quantizers {sorted(quantizers)}: need exactly {list(OPERANDS)}")
    attention.operand_quantizers = nn.ModuleDict(dict(quantizers))
    attention.__class__ = _quantized_class(type(attention))
    return attention


def restore_attention_(model: nn.Module) -> nn.Module:
    """Undo ``quantize_attention_operands_`` (float matmuls, the original class)."""
    for m in model.modules():
        if isinstance(m, QuantizedMatmulAttention):
            del m.operand_quantizers
            m.__class__ = m.float_class
    return model


def quantized_attentions(model: nn.Module) -> list[str]:
    """The names of the self-attentions whose matmul operands are quantized."""
    return [n for n, m in model.named_modules() if isinstance(m, QuantizedMatmulAttention)]
