"""Precision-plan builders for Hugging Face BERT module names.

Per encoder layer ``encoder.layer.{i}`` the six Linear kinds are ``attention.self.{query,key,
value}``, ``attention.output.dense``, ``intermediate.dense``, ``output.dense``; embeddings are
``embeddings.{word,position,token_type}_embeddings``. Keys are ``re:`` patterns whose prefix is
open by default (``prefix=None`` matches ``bert.``, ``model.bert.``, ``roberta.``...), so one plan
fits BertForSequenceClassification / TokenClassification / QuestionAnswering and a Lightning
wrapper; pass ``prefix="bert."`` to pin it.

What the builders quantize (Q-BERT quantizes all encoder weights; embeddings at ``e_bits``):

* the 6 encoder Linear kinds of every layer at ``w_bits``, inputs at ``a_bits``;
* word and position embeddings at ``e_bits`` (token-type embeddings, a 2 x hidden table, stay
  float unless ``quantize_token_type``), with ``e_groups`` row groups (30522 rows: 1, 2, 3, 6...);
* **the pooler stays float by default** (``quantize_pooler=False``): it is not part of the
  encoder, the paper's "Size w/o-e" (324.5 MB) excludes it, only sequence classification has
  one, and it acts as part of the task head;
* the task head (``classifier``, ``qa_outputs``) is never matched, so it stays float;
* LayerNorm, softmax, GELU are never quantized.

Weight ranges and grids (``w_range``: minmax | percentile | mse, with ``percentile``; ``w_grid``:
restricted | full | asymmetric, None = as ``symmetric`` implies) apply to every weight the plan
quantizes, embedding tables included; inputs keep ``symmetric`` and min/max EMA ranges unless
``inputs`` (``qbert.quant.input_ranges.InputRanges``) gives a site another mode or width.

Q/K/V row groups: ``groups`` contiguous runs of rows (which straddle heads unless ``groups`` is a
multiple of the number of heads that divides the rows), one per head (``heads_as_groups``), or
``groups_per_head`` runs inside each head (``num_heads x groups_per_head`` groups: HF lays a
head out as a contiguous block of ``head_dim`` rows, so equal runs never cross a head boundary).

Plans are data: ``plan_to_dict(plan)`` is what goes into results.json.
"""

from __future__ import annotations

import re
from typing import Any, Callable, Optional, Sequence

from qbert.quant.granularity import Groups
from qbert.quant.input_ranges import SITE_MODULES, SITES, InputRanges
from qbert.quant.plan import Plan, QuantSpec
from qbert.quant.primitives import FLOAT_BITS

QKV = SITE_MODULES["qkv"]
ATTN_OUT = SITE_MODULES["attn_out"]
FFN = r"(?:intermediate|output)\.dense"
ABLATIONS = ("word_embedding", "position_embedding", "self_attention", "ffn")
# the input sites (qbert.quant.input_ranges) of the Linears each ablation module quantizes
ABLATION_SITES = {"word_embedding": (), "position_embedding": (), "self_attention": ("qkv", "attn_out"),
                  "ffn": ("ffn_in", "ffn_out")}


def _p(prefix: Optional[str]) -> str:
    return r"(?:.+\.)?" if prefix is None else re.escape(prefix)


def _layer(prefix: Optional[str], i: Optional[int], what: str) -> str:
    idx = r"\d+" if i is None else str(i)
    return f"re:{_p(prefix)}encoder\\.layer\\.{idx}\\.{what}"


def _emb(prefix: Optional[str], table: str) -> str:
    return f"re:{_p(prefix)}embeddings\\.{table}_embeddings"


def _qkv_groups(groups: Groups, heads_as_groups: bool, num_heads: Optional[int],
                groups_per_head: Optional[int] = None) -> Groups:
    if groups_per_head is not None:
        if heads_as_groups:
            raise ValueError("heads_as_groups=True is groups_per_head=1: set only one of them")
        if isinstance(groups_per_head, bool) or not isinstance(groups_per_head, int) or groups_per_head < 1:
            raise ValueError(f"groups_per_head={groups_per_head!r} must be a positive int")
        if not num_heads:
            raise ValueError("groups_per_head needs num_heads (config.num_attention_heads)")
        return num_heads * groups_per_head  # equal runs of head_dim / groups_per_head rows
    if not heads_as_groups:
        return groups
    if not num_heads:
        raise ValueError("heads_as_groups=True needs num_heads (config.num_attention_heads)")
    return num_heads


def _weight_kw(w_range: Optional[str], w_grid: Optional[str], percentile: float,
               range: str = "minmax") -> dict[str, Any]:
    """The QuantSpec fields of a weight's range and grid (only those that differ from what the
    spec implies anyway, so a default plan's specs stay exactly as they were)."""
    weight: dict[str, Any] = {}
    if w_range not in (None, range):
        weight["w_range"] = w_range
    if w_grid is not None:
        weight["w_grid"] = w_grid
    if percentile != 99.99:
        weight["percentile"] = percentile
    return weight


def _layer_entries(prefix: Optional[str], i: Optional[int], spec: Optional[QuantSpec],
                   qkv_groups: Groups, inputs: Optional[InputRanges] = None,
                   sites: Sequence[str] = SITES) -> Plan:
    """The entries of ``sites`` (Linear kinds by their input, see ``input_ranges``): one entry
    per site, merged into one for those that end up with the same spec (so a plan without input
    settings keeps its two entries, Q/K/V and the rest)."""
    inputs = inputs or InputRanges()
    specs = {site: inputs.spec_for(spec, site) for site in sites}
    if "qkv" in specs and specs["qkv"] is not None:
        specs["qkv"] = specs["qkv"].replace(groups=qkv_groups)
    entries: Plan = [(_layer(prefix, i, QKV), specs["qkv"])] if "qkv" in specs else []
    rest = [site for site in sites if site != "qkv"]
    for shared in dict.fromkeys(specs[site] for site in rest):  # each distinct spec, in site order
        entries.append((_layer(prefix, i, _sites_regex([s for s in rest if specs[s] == shared])), shared))
    return entries


def _sites_regex(sites: Sequence[str]) -> str:
    """The module regex of some sites; the merged ones spelled as plans always spelled them."""
    merged = {("attn_out", "ffn_in", "ffn_out"): f"(?:{ATTN_OUT}|{FFN})", ("ffn_in", "ffn_out"): FFN}
    key = tuple(sites)
    if key in merged:
        return merged[key]
    return SITE_MODULES[key[0]] if len(key) == 1 else f"(?:{'|'.join(SITE_MODULES[s] for s in key)})"


def _embedding_entries(prefix: Optional[str], e_bits: int, e_groups: Groups, symmetric: bool,
                       token_type: bool, tables: Sequence[str] = ("word", "position"), **weight: Any) -> Plan:
    if e_bits == FLOAT_BITS:
        return []
    spec = QuantSpec(w_bits=e_bits, groups=e_groups, a_bits=FLOAT_BITS, symmetric=symmetric, **weight)
    names = [*tables, "token_type"] if token_type else list(tables)
    return [(_emb(prefix, t), spec) for t in names]


def uniform_plan(w_bits: int, e_bits: int = 8, a_bits: int = 8, groups: Groups = 1, *,
                 heads_as_groups: bool = False, num_heads: Optional[int] = None,
                 e_groups: Groups = 1, symmetric: bool = True, range: str = "minmax",
                 w_range: Optional[str] = None, w_grid: Optional[str] = None, percentile: float = 99.99,
                 quantize_pooler: bool = False, quantize_token_type: bool = False,
                 groups_per_head: Optional[int] = None, inputs: Optional[InputRanges] = None,
                 prefix: Optional[str] = None) -> Plan:
    """Every encoder Linear at ``w_bits`` with ``groups`` (Q/K/V: one group per head if
    ``heads_as_groups``, ``groups_per_head`` per head if set), word+position embeddings at
    ``e_bits``; inputs as ``inputs`` says per site; see module docstring."""
    weight = _weight_kw(w_range, w_grid, percentile, range)
    spec = QuantSpec(w_bits=w_bits, groups=groups, a_bits=a_bits, symmetric=symmetric, range=range, **weight)
    plan = _layer_entries(prefix, None, spec, _qkv_groups(groups, heads_as_groups, num_heads, groups_per_head),
                          inputs)
    plan += _embedding_entries(prefix, e_bits, e_groups, symmetric, quantize_token_type, **weight)
    if quantize_pooler:
        plan.append((f"re:{_p(prefix)}pooler\\.dense", spec))
    return plan


def directq_plan(w_bits: int, e_bits: int = 8, a_bits: int = 8, **kw: Any) -> Plan:
    """Q-BERT's DirectQ baseline: uniform bits, one range per matrix."""
    return uniform_plan(w_bits, e_bits, a_bits, groups=1, **kw)


def qbert_plan(w_bits: int, e_bits: int = 8, a_bits: int = 8, groups: Groups = 128, **kw: Any) -> Plan:
    """Q-BERT group-wise quantization (128 groups per matrix by default)."""
    return uniform_plan(w_bits, e_bits, a_bits, groups=groups, **kw)


def q8bert_plan(*, momentum: float = 0.9, dynamic: bool = False, prefix: Optional[str] = None,
                quantize_token_type: bool = True) -> Plan:
    """Q8BERT: symmetric 8-bit weights (max |w|) and inputs of every encoder Linear, per-tensor
    ranges, all three embedding tables. Inputs: an EMA of max |x| with factor ``momentum``
    (quantization-aware training), or with ``dynamic`` each batch's own max |x| (the paper's
    dynamic post-training quantization baseline)."""
    spec = QuantSpec(w_bits=8, groups=1, a_bits=8, symmetric=True, momentum=momentum, dynamic=dynamic)
    plan = _layer_entries(prefix, None, spec, 1)
    return plan + _embedding_entries(prefix, 8, 1, True, quantize_token_type)


def mkq_plan(w_bits: int = 4, a_bits: int = 4, e_bits: int = 8, groups: Groups = 1, *,
             scale_grad: str = "lsq", a_symmetric: bool = False, attention_operands: bool = False,
             integer_zero_points: bool = False, prefix: Optional[str] = None) -> Plan:
    """MKQ-BERT: every encoder Linear with a learned weight step (symmetric, ``groups`` row
    groups) and a learned input step + offset (asymmetric, LSQ+); embeddings at ``e_bits`` with
    max-abs ranges (their input is token ids, so there is nothing to learn about an activation).
    ``attention_operands``: the attention matmuls' operands (Q, K, P, V) at ``a_bits`` too (true
    W4A4, ``qbert.quant.attention``); ``integer_zero_points``: every learned offset on the
    integer grid."""
    # a symmetric input has no offset to round: with symmetric inputs only the probabilities'
    # quantizer (on the Q/K/V spec, with attention_operands) takes integer_zero_points
    spec = QuantSpec(w_bits=w_bits, groups=groups, a_bits=a_bits, symmetric=a_symmetric, learned=scale_grad,
                     integer_zero_point=integer_zero_points and not a_symmetric)
    (qkv_key, qkv), *rest = _layer_entries(prefix, None, spec, groups)
    plan = [(qkv_key, qkv.replace(attn_operands=attention_operands, integer_zero_point=integer_zero_points)), *rest]
    return plan + _embedding_entries(prefix, e_bits, 1, True, False)


def layerwise_plan(bits_per_layer: Sequence[int], e_bits: int = 8, a_bits: int = 8,
                   groups: Groups = 128, *, heads_as_groups: bool = False,
                   num_heads: Optional[int] = None, e_groups: Groups = 1, symmetric: bool = True,
                   range: str = "minmax", w_range: Optional[str] = None, w_grid: Optional[str] = None,
                   percentile: float = 99.99, groups_per_head: Optional[int] = None,
                   inputs: Optional[InputRanges] = None, prefix: Optional[str] = None) -> Plan:
    """Mixed precision: encoder layer ``i`` at ``bits_per_layer[i]`` (32 = keep it float).

    An entry per layer, so a model with fewer layers fails ("matches no module"); layers
    beyond the list are not matched and stay float.
    """
    if not bits_per_layer:
        raise ValueError("bits_per_layer is empty")
    qkv_groups = _qkv_groups(groups, heads_as_groups, num_heads, groups_per_head)
    weight = _weight_kw(w_range, w_grid, percentile, range)
    plan: Plan = []
    for i, bits in enumerate(bits_per_layer):
        spec = None if bits == FLOAT_BITS else QuantSpec(
            w_bits=bits, groups=groups, a_bits=a_bits, symmetric=symmetric, range=range, **weight)
        plan += _layer_entries(prefix, i, spec, qkv_groups, inputs)
    return plan + _embedding_entries(prefix, e_bits, e_groups, symmetric, False, **weight)


def ablation_plan(module: str, bits: int, *, groups: Groups = 128, a_bits: int = 8,
                  heads_as_groups: bool = False, num_heads: Optional[int] = None,
                  e_groups: Groups = 1, symmetric: bool = True, w_range: Optional[str] = None,
                  w_grid: Optional[str] = None, percentile: float = 99.99,
                  groups_per_head: Optional[int] = None, inputs: Optional[InputRanges] = None,
                  prefix: Optional[str] = None) -> Plan:
    """Quantize one module kind only (Q-BERT's per-module study); everything else float.

    ``module``: ``word_embedding`` | ``position_embedding`` | ``self_attention`` (Q/K/V and
    the attention output projection) | ``ffn`` (intermediate and output dense). ``inputs`` may
    name only the sites of that module kind (an embedding has none).
    """
    weight = _weight_kw(w_range, w_grid, percentile)
    if module not in ABLATIONS:
        raise ValueError(f"ablation module={module!r}, expected one of {ABLATIONS}")
    sites = ABLATION_SITES[module]
    inputs = inputs or InputRanges()
    foreign = sorted((set(inputs.sites) | set(inputs.site_bits)) - set(sites))
    if foreign or (not sites and not inputs.is_default):
        raise ValueError(f"ablation module={module!r} quantizes the inputs of sites {list(sites)} only; "
                         f"input settings for {foreign or 'its inputs'} would change nothing")
    if module in ("word_embedding", "position_embedding"):
        return _embedding_entries(prefix, bits, e_groups, symmetric, False, (module.split("_")[0],), **weight)
    spec = QuantSpec(w_bits=bits, groups=groups, a_bits=a_bits, symmetric=symmetric, **weight)
    return _layer_entries(prefix, None, spec, _qkv_groups(groups, heads_as_groups, num_heads, groups_per_head),
                          inputs, sites)


PLAN_BUILDERS: dict[str, Callable[..., Plan]] = {
    "uniform": uniform_plan,
    "directq": directq_plan,
    "qbert": qbert_plan,
    "q8bert": q8bert_plan,
    "mkq": mkq_plan,
    "layerwise": layerwise_plan,
    "ablation": ablation_plan,
}


def build_plan(name: str, **kwargs: Any) -> Plan:
    """Registry dispatch for configs: ``build_plan("qbert", w_bits=4)``."""
    if name not in PLAN_BUILDERS:
        raise ValueError(f"unknown plan builder {name!r}; known: {sorted(PLAN_BUILDERS)}")
    return PLAN_BUILDERS[name](**kwargs)
