"""Model-size accounting from a config + plan (no weights needed) or from a quantized model.

Sizes are in MiB (2^20 bytes): the paper's "MB" is MiB, since BERT-base's encoder has
85,054,464 parameters (weights, biases, LayerNorms) and 85,054,464 x 4 B / 2^20 = 324.457 ->
its "324.5". Sections, by module name: ``embeddings`` (word/position/token-type tables and
their LayerNorm), ``encoder`` (= the paper's "Size w/o-e"), ``other`` (pooler and task head).

Two conventions:

``"paper"`` (default; reproduces Q-BERT's size row)
    Every parameter of a quantized module is charged at its ``w_bits``, the bias included; a
    LayerNorm is charged at the ``w_bits`` of the one quantized Linear beside it (same parent:
    ``attention.output.{dense,LayerNorm}``, ``output.{dense,LayerNorm}``), i.e. a layer at b
    bits costs (all its parameters) x b. Each weight group stores its range as two fp32 numbers
    (min/max, or scale/zero-point). Activation ranges are not weights and are not counted.
    Float modules cost 32 bits a parameter.

``"storage"`` (what a deployed qbert model stores)
    Weights at ``w_bits``; biases and LayerNorms fp32; per weight group one fp32 scale, plus an
    fp32 zero point when the weight's grid is asymmetric (never for a learned step, which is
    symmetric whatever ``symmetric`` says of the input); two fp32 numbers per activation quantizer
    (``quant=mkq``: its learned step and offset), none for a dynamic one (per batch or per token:
    its range is taken from each input, nothing is stored).

BERT-base (hidden 768, 12 layers, FFN 3072), encoder ("Size w/o-e"), 128 groups per matrix:

============  =========  ==========================  =============
row           paper      ``"paper"`` convention       ``"storage"``
============  =========  ==========================  =============
32-bit        324.5      324.457 -> 324.5              324.457
8-bit         81.2       81.185  -> 81.2               81.493
4-bit         40.6       40.627  -> 40.6               40.993
3-bit         30.5       30.488  -> 30.5               30.868
2-bit         20.4       20.349  -> 20.3  (-0.051)     20.743
MP 2/3 (6x3)  25.4       25.419  -> 25.4               25.805
============  =========  ==========================  =============

No principled convention we found gives all four uniform rows (a grid search over which of
bias/LayerNorm/pooler are counted at b or 32 bits and 0-16 bytes per group, with 1, 12, 128 or
768 groups, finds only ad-hoc mixes). The paper's rows fit ``N_enc x b / 8 B + c`` with a
constant ``c`` in [0.0714, 0.0928] MiB; our two fp32 numbers per group give c = 0.0703 MiB, so
2-bit lands at 20.349, 768 bytes under the 20.35 that would round to 20.4. The paper also lists
DirectQ (1 group) at the same sizes as Q-BERT (128 groups), so its overhead did not depend on
the group count; ours does (DirectQ: 81.1 / 40.6 / 30.4 / 20.3).
MP 2/3 = 23.4 (MNLI, CoNLL) cannot come from whole layers: each layer moved from 2 to 3 bits
adds 0.845 MiB (3 layers -> 22.9, 4 -> 23.7); 3 layers plus one more FFN block at 3 bits
gives 23.447 -> 23.4.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping, Optional

from torch import nn

from qbert.quant.granularity import resolve_groups
from qbert.quant.modules import QuantEmbedding, QuantLinear
from qbert.quant.plan import PlanLike, QuantSpec, assign
from qbert.quant.primitives import FLOAT_BITS

MIB_BITS = 8 * 2**20
CONVENTIONS = ("paper", "storage")
SECTIONS = ("embeddings", "encoder", "other")


@dataclass(frozen=True)
class BertDims:
    hidden: int
    layers: int
    heads: int
    intermediate: int
    vocab: int
    max_positions: int
    type_vocab: int = 2

    @classmethod
    def from_config(cls, cfg: Any) -> "BertDims":
        """From an HF ``BertConfig`` (or any object / mapping with its attribute names)."""
        if isinstance(cfg, BertDims):
            return cfg
        get = cfg.get if isinstance(cfg, Mapping) else (lambda k, d=None: getattr(cfg, k, d))
        return cls(get("hidden_size"), get("num_hidden_layers"), get("num_attention_heads"),
                   get("intermediate_size"), get("vocab_size"), get("max_position_embeddings"),
                   get("type_vocab_size", 2))


BERT_BASE = BertDims(hidden=768, layers=12, heads=12, intermediate=3072, vocab=30522, max_positions=512)


@dataclass(frozen=True)
class ModuleSlot:
    """One module's own parameters, as the accounting sees them."""

    name: str
    kind: str  # "linear" | "embedding" | "layernorm" | "other"
    rows: int
    weight: int  # number of weight elements (all params for "other")
    bias: int = 0

    @property
    def section(self) -> str:
        parts = self.name.split(".")
        return "embeddings" if "embeddings" in parts else "encoder" if "encoder" in parts else "other"

    @property
    def quantizable(self) -> bool:
        return self.kind in ("linear", "embedding")


@dataclass(frozen=True)
class SizeReport:
    convention: str
    bits: dict[str, int]  # per section, overhead included
    fp32_bits: dict[str, int]
    overhead_bits: dict[str, int]
    per_module_bits: dict[str, int] = field(repr=False, default_factory=dict)

    def mib(self, section: Optional[str] = None) -> float:
        return (sum(self.bits.values()) if section is None else self.bits[section]) / MIB_BITS

    @property
    def encoder_mib(self) -> float:  # the paper's "Size w/o-e"
        return self.mib("encoder")

    @property
    def embedding_mib(self) -> float:
        return self.mib("embeddings")

    @property
    def total_mib(self) -> float:
        return self.mib()

    def compression(self, section: Optional[str] = None) -> float:
        num = sum(self.fp32_bits.values()) if section is None else self.fp32_bits[section]
        den = sum(self.bits.values()) if section is None else self.bits[section]
        return num / den if den else 1.0

    def to_dict(self) -> dict[str, Any]:
        """JSON-able summary for results.json (MiB, rounded to 4 decimals)."""
        out: dict[str, Any] = {"convention": self.convention, "unit": "MiB"}
        for s in SECTIONS:
            out[s] = {"mib": round(self.bits[s] / MIB_BITS, 4), "fp32_mib": round(self.fp32_bits[s] / MIB_BITS, 4),
                      "overhead_mib": round(self.overhead_bits[s] / MIB_BITS, 4),
                      "compression": round(self.compression(s), 4)}
        out["total"] = {"mib": round(self.total_mib, 4),
                        "fp32_mib": round(sum(self.fp32_bits.values()) / MIB_BITS, 4),
                        "compression": round(self.compression(), 4)}
        return out


def _parent(name: str) -> str:
    return name.rpartition(".")[0]


def account(slots: Iterable[ModuleSlot], specs: Mapping[str, QuantSpec], convention: str = "paper") -> SizeReport:
    """Sum the bits of ``slots`` given the applied ``specs`` (by module name)."""
    if convention not in CONVENTIONS:
        raise ValueError(f"size convention={convention!r}, expected one of {CONVENTIONS}")
    slots = list(slots)
    bits: dict[str, int] = defaultdict(int)
    fp32: dict[str, int] = defaultdict(int)
    overhead: dict[str, int] = defaultdict(int)
    per_module: dict[str, int] = {}
    # paper: a LayerNorm takes the bits of the single quantized Linear sharing its parent
    linear_bits: dict[str, list[int]] = defaultdict(list)
    for s in slots:
        if s.kind == "linear" and s.name in specs:
            linear_bits[_parent(s.name)].append(specs[s.name].w_bits)
    for s in slots:
        n = s.weight + s.bias
        spec = specs.get(s.name)
        if spec is not None:
            w = spec.w_bits
            b = w if convention == "paper" else FLOAT_BITS
            ovh = 0
            if w < FLOAT_BITS:
                per_group = 2 if convention == "paper" or not spec.weight_symmetric else 1
                ovh += resolve_groups(spec.groups, s.rows, s.name) * per_group * FLOAT_BITS
            if convention == "storage" and spec.a_bits < FLOAT_BITS and not spec.dynamic:
                ovh += 2 * FLOAT_BITS
            total = s.weight * w + s.bias * b + ovh
        else:
            ovh = 0
            lb = linear_bits.get(_parent(s.name), [])
            ln_bits = lb[0] if convention == "paper" and s.kind == "layernorm" and len(lb) == 1 else FLOAT_BITS
            total = n * ln_bits
        bits[s.section] += total
        fp32[s.section] += n * FLOAT_BITS
        overhead[s.section] += ovh
        per_module[s.name] = total
    full = lambda d: {k: d.get(k, 0) for k in SECTIONS}  # noqa: E731
    return SizeReport(convention, full(bits), full(fp32), full(overhead), per_module)


def bert_slots(dims: BertDims, prefix: str = "bert.", pooler: bool = True,
               num_labels: Optional[int] = None) -> list[ModuleSlot]:
    """The modules of an HF BERT model with their shapes, named as HF names them."""
    H, I = dims.hidden, dims.intermediate
    e = f"{prefix}embeddings."
    slots = [ModuleSlot(f"{e}word_embeddings", "embedding", dims.vocab, dims.vocab * H),
             ModuleSlot(f"{e}position_embeddings", "embedding", dims.max_positions, dims.max_positions * H),
             ModuleSlot(f"{e}token_type_embeddings", "embedding", dims.type_vocab, dims.type_vocab * H),
             ModuleSlot(f"{e}LayerNorm", "layernorm", H, H, H)]
    for i in range(dims.layers):
        L = f"{prefix}encoder.layer.{i}."
        slots += [ModuleSlot(f"{L}attention.self.{q}", "linear", H, H * H, H) for q in ("query", "key", "value")]
        slots += [ModuleSlot(f"{L}attention.output.dense", "linear", H, H * H, H),
                  ModuleSlot(f"{L}attention.output.LayerNorm", "layernorm", H, H, H),
                  ModuleSlot(f"{L}intermediate.dense", "linear", I, I * H, I),
                  ModuleSlot(f"{L}output.dense", "linear", H, H * I, H),
                  ModuleSlot(f"{L}output.LayerNorm", "layernorm", H, H, H)]
    if pooler:
        slots.append(ModuleSlot(f"{prefix}pooler.dense", "linear", H, H * H, H))
    if num_labels:
        slots.append(ModuleSlot("classifier", "linear", num_labels, num_labels * H, num_labels))
    return slots


def size_from_config(config: Any, plan: Optional[PlanLike] = None, *, convention: str = "paper",
                     prefix: str = "bert.", pooler: bool = True, num_labels: Optional[int] = None) -> SizeReport:
    """Size of a BERT of ``config``'s dimensions under ``plan`` (None = all float).

    The plan is resolved exactly as ``quantize_`` would resolve it on the real model (same
    matching rules and errors), against HF module names under ``prefix``.
    """
    slots = bert_slots(BertDims.from_config(config), prefix, pooler, num_labels)
    specs = {} if plan is None else assign(plan, ((s.name, s.kind, s.quantizable) for s in slots))
    return account(slots, specs, convention)


def model_slots(model: nn.Module) -> tuple[list[ModuleSlot], dict[str, QuantSpec]]:
    """Slots and applied specs of a real (possibly quantized) model; tied weights count once.

    A quantized module's ranges are charged through its spec (per weight group, per activation
    quantizer), so the parameters of its quantizers (``quant=mkq``'s learned steps and offsets)
    are not counted again as modules of their own."""
    seen: set[int] = set()
    quantized: list[str] = []  # names of QuantLinear / QuantEmbedding modules seen so far
    slots: list[ModuleSlot] = []
    specs: dict[str, QuantSpec] = {}

    def count(p: Optional[nn.Parameter]) -> int:
        if p is None or id(p) in seen:
            return 0
        seen.add(id(p))
        return p.numel()

    for name, m in model.named_modules():  # a parent comes before its children
        if any(name.startswith(f"{q}.") for q in quantized):
            continue  # a quantizer inside a quantized module: its ranges are in the spec's overhead
        if isinstance(m, (QuantLinear, QuantEmbedding)):
            quantized.append(name)
        own = dict(m.named_parameters(recurse=False))
        if not own:
            continue
        if isinstance(m, (nn.Linear, nn.Embedding, nn.LayerNorm)) and "weight" in own:
            kind = "linear" if isinstance(m, nn.Linear) else "embedding" if isinstance(m, nn.Embedding) else "layernorm"
            slots.append(ModuleSlot(name, kind, m.weight.shape[0], count(m.weight), count(own.get("bias"))))
        else:
            slots.append(ModuleSlot(name, "other", 0, sum(count(p) for p in own.values())))
        if isinstance(m, (QuantLinear, QuantEmbedding)):
            specs[name] = m.spec
    return slots, specs


def size_from_model(model: nn.Module, convention: str = "paper") -> SizeReport:
    """Size of an actual model, with the specs its quantized modules carry."""
    slots, specs = model_slots(model)
    return account(slots, specs, convention)
