"""Quantization methods as config: ``quant.method`` -> a precision plan for a task model."""

from __future__ import annotations

from typing import Callable, Optional, Sequence

from qbert.config import QuantConfig
from qbert.quant.bert_plans import ablation_plan, directq_plan, layerwise_plan, mkq_plan, q8bert_plan, qbert_plan
from qbert.quant.plan import Plan

LayerBits = Optional[Sequence[int]]


def _directq(cfg: QuantConfig, num_heads: int, layer_bits: LayerBits) -> Plan:
    return directq_plan(cfg.w_bits, cfg.e_bits, cfg.a_bits, symmetric=cfg.symmetric)


def _qbert(cfg: QuantConfig, num_heads: int, layer_bits: LayerBits) -> Plan:
    return qbert_plan(cfg.w_bits, cfg.e_bits, cfg.a_bits, groups=cfg.groups, symmetric=cfg.symmetric,
                      heads_as_groups=cfg.heads_as_groups, num_heads=num_heads)


def _qbert_mp(cfg: QuantConfig, num_heads: int, layer_bits: LayerBits) -> Plan:
    if not layer_bits:
        raise ValueError("quant=qbert_mp needs per-layer widths (qbert.hessian.mixed_precision)")
    return layerwise_plan(list(layer_bits), cfg.e_bits, cfg.a_bits, groups=cfg.groups, symmetric=cfg.symmetric,
                          heads_as_groups=cfg.heads_as_groups, num_heads=num_heads)


def _ablation(cfg: QuantConfig, num_heads: int, layer_bits: LayerBits) -> Plan:
    return ablation_plan(cfg.module, cfg.w_bits, groups=cfg.groups, a_bits=cfg.a_bits,
                         heads_as_groups=cfg.heads_as_groups, num_heads=num_heads, symmetric=cfg.symmetric)


def _q8bert(cfg: QuantConfig, num_heads: int, layer_bits: LayerBits) -> Plan:
    return q8bert_plan(momentum=cfg.ema_decay)


def _q8bert_ptq(cfg: QuantConfig, num_heads: int, layer_bits: LayerBits) -> Plan:
    return q8bert_plan(dynamic=True)


def _mkq(cfg: QuantConfig, num_heads: int, layer_bits: LayerBits) -> Plan:
    return mkq_plan(cfg.w_bits, cfg.a_bits, cfg.e_bits, groups=cfg.groups, scale_grad=cfg.scale_grad,
                    a_symmetric=cfg.symmetric)


METHODS: dict[str, Callable[[QuantConfig, int, LayerBits], Plan]] = {
    "directq": _directq,
    "qbert": _qbert,
    "qbert_mp": _qbert_mp,
    "ablation": _ablation,
    "q8bert": _q8bert,
    "q8bert_ptq": _q8bert_ptq,
    "mkq": _mkq,
}


def plan_for(cfg: QuantConfig, num_heads: int, layer_bits: LayerBits = None) -> Plan | None:
    """The precision plan of a method, or None for full precision. ``layer_bits``: the
    per-encoder-layer widths of a mixed-precision method (from the Hessian analysis)."""
    if cfg.method == "none":
        return None
    if cfg.method not in METHODS:
        raise ValueError(f"config key 'quant.method': no plan builder for {cfg.method!r} "
                         f"(known: {sorted(METHODS)})")
    return METHODS[cfg.method](cfg, num_heads, layer_bits)
