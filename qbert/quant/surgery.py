"""Model surgery: ``quantize_`` / ``dequantize_`` in place, and ``quantization_map``.

Round trip of a quantized run (the map is JSON, stored in results.json and the checkpoint)::

    qmap = quantization_map(model)                    # {exact name: spec dict}
    fresh = build_model(cfg)                          # same architecture, float
    quantize_(fresh, qmap)                            # same modules, same buffers
    fresh.load_state_dict(state_dict)                 # strict=True works

Module names are relative to the module you pass: for a LightningModule holding the HF model
as ``self.model``, call ``quantize_(lit.model, plan)`` (names start with ``bert.``), or pass
``lit`` and let regex keys with an open prefix (the ``bert_plans`` builders' default) match
``model.bert...``. Only ``nn.Linear``/``nn.Embedding`` (exact types) are replaced;
LayerNorm, softmax, GELU, dropout are never touched. A self-attention whose query/key/value
specs set ``attn_operands`` also gets its matmul operands quantized (``qbert.quant.attention``).
"""

from __future__ import annotations

import contextlib
from typing import Any, Iterator

from torch import nn

from qbert.quant.attention import attention_operand_specs, quantize_attention_operands_, restore_attention_
from qbert.quant.learned import LearnedActivationQuantizer
from qbert.quant.modules import QUANT_MODULES, QuantEmbedding, QuantLinear
from qbert.quant.plan import PlanLike, assign
from qbert.quant.quantizers import ActivationQuantizer
from qbert.weights import replace_module

QUANTIZED_TYPES = (QuantLinear, QuantEmbedding)


def quantize_(model: nn.Module, plan: PlanLike) -> nn.Module:
    """Replace the Linear/Embedding modules selected by ``plan`` with fake-quantized ones.

    In place; returns ``model`` for chaining. Errors (before anything is replaced): an entry
    matching no module, a plan quantizing nothing (``ValueError``); a spec on an unsupported
    module type (``TypeError``); a selected module that is already quantized, or whose group
    count does not divide its rows (``ValueError`` naming module and numbers).
    """
    modules = list(model.named_modules())
    chosen = assign(plan, ((n, type(m).__name__, type(m) in QUANT_MODULES or isinstance(m, QUANTIZED_TYPES))
                           for n, m in modules))
    by_name = dict(modules)
    already = [n for n in chosen if isinstance(by_name[n], QUANTIZED_TYPES)]
    if already:
        raise ValueError(f"modules already quantized (call dequantize_ first): {already}")
    # Build every replacement first, so a bad group count (or attention spec) leaves the model untouched.
    existing = {n: m.spec for n, m in modules if isinstance(m, QuantLinear)}
    attentions = attention_operand_specs(model, {**existing, **chosen})
    new = {n: QUANT_MODULES[type(by_name[n])].from_float(by_name[n], spec, name=n) for n, spec in chosen.items()}
    for n, q in new.items():
        replace_module(model, n, q)
    return quantize_attention_operands_(model, attentions)


def dequantize_(model: nn.Module, bake: bool = False) -> nn.Module:
    """Inverse of ``quantize_``: plain modules with the float weights (``bake``: with Q(W))."""
    restore_attention_(model)
    for name, m in list(model.named_modules()):
        if isinstance(m, QUANTIZED_TYPES):
            replace_module(model, name, m.to_float(bake=bake))
    return model


def quantization_map(model: nn.Module) -> dict[str, dict[str, Any]]:
    """``{module name: spec dict}`` of what is actually quantized; JSON-able and a valid plan."""
    return {n: m.spec.to_dict() for n, m in model.named_modules() if isinstance(m, QUANTIZED_TYPES)}


def activation_quantizers(model: nn.Module) -> dict[str, nn.Module]:
    """EMA / dynamic (``ActivationQuantizer``) and learned (``LearnedActivationQuantizer``) ones."""
    kinds = (ActivationQuantizer, LearnedActivationQuantizer)
    return {n: m for n, m in model.named_modules() if isinstance(m, kinds)}


def needs_calibration(model: nn.Module) -> bool:
    """Whether some activation quantizer needs ranges from data before it can evaluate (not a
    dynamic one, which takes each batch's range)."""
    return any(not getattr(q, "dynamic", False) for q in activation_quantizers(model).values())


def learned_quantizers(model: nn.Module) -> bool:
    return any(isinstance(m, QUANTIZED_TYPES) and m.spec.learned is not None for m in model.modules())


def set_fake_quant_(model: nn.Module, enabled: bool) -> nn.Module:
    """Switch fake quantization of every quantized module on or off (Q8BERT's delay: float
    compute for the first steps of QAT, EMA ranges still observed). Returns ``model``."""
    for m in model.modules():
        if isinstance(m, QUANTIZED_TYPES):
            m.fake_quant_enabled = enabled
    return model


@contextlib.contextmanager
def calibration(model: nn.Module) -> Iterator[nn.Module]:
    """Let activation quantizers take ranges from data even in eval mode (PTQ calibration, and
    the data initialisation of learned scales).

    ``with calibration(model.eval()): for b in batches: model(**b)`` observes ranges without
    dropout; on exit the ranges are frozen again (EMA) or become the trained initial values
    (learned scales).
    """
    quantizers = list(activation_quantizers(model).values())
    for q in quantizers:
        q.observing = True
    try:
        yield model
    finally:
        for q in quantizers:
            q.observing = False
