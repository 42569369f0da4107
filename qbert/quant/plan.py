"""``QuantSpec`` and precision plans: which module gets which quantization, as plain data.

A **precision plan** is an ordered list of ``(key, spec)`` pairs (a dict works too: its order
is kept). ``key`` is an exact module name (``"bert.encoder.layer.0.attention.self.query"``) or
``"re:"`` + a regex that must ``fullmatch`` the name. ``spec`` is a ``QuantSpec``, its dict
form, or ``None`` (= keep float). For each module the **first matching entry wins**.

Matching rules (``assign``):

* an exact key matches that module whatever its type; a spec on a module that cannot be
  quantized (anything but ``nn.Linear``/``nn.Embedding``) is a ``TypeError``;
* a regex key only considers quantizable modules, so ``re:.*\\.dense`` never reaches a
  LayerNorm;
* an entry that matches no module is a ``ValueError`` naming it (typo protection; an entry
  whose modules are all claimed by earlier entries is fine: first match wins);
* a plan that quantizes no module is a ``ValueError``.

``quantization_map(model)`` (surgery.py) returns exactly this format with exact names, so a
saved map is itself a plan.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass
from typing import Any, Iterable, Mapping, Optional, Sequence, Union

from qbert.quant.granularity import CHANNEL, Groups
from qbert.quant.primitives import FLOAT_BITS, GRIDS, RANGE_METHODS, SUPPORTED_BITS, WEIGHT_RANGE_METHODS, grid_flags

REGEX_PREFIX = "re:"
# Gradient rules of a learned scale (qbert.quant.learned): LSQ with its gradient scaling, or
# without it. MKQ-BERT's own rule is not implemented: its definition was not available offline.
SCALE_GRADS: tuple[str, ...] = ("lsq", "lsq_unscaled")
# QuantSpec flags added after maps were saved: left out of to_dict while off
ADDED_FLAGS: tuple[str, ...] = ("per_token", "attn_operands", "integer_zero_point")


@dataclass(frozen=True)
class QuantSpec:
    """How to quantize one module.

    ``w_bits``/``a_bits``: 2..8 or 32 (= off). ``a_bits`` quantizes a Linear's *input*.
    ``groups``: row groups of the weight (int, or ``"channel"``). ``symmetric`` applies to
    the input, and to the weight unless ``w_grid`` says otherwise. ``range``: ``"minmax"`` or
    ``"percentile"`` (then ``percentile``), for the input, and for the weight unless ``w_range``
    says otherwise. ``w_range``: the weight's own range, ``"minmax"``, ``"percentile"`` or
    ``"mse"`` (clipping of least squared error on the grid; see ``qbert.quant.quantizers``);
    None = ``range``. ``w_grid``: the weight's grid, ``"restricted"`` (symmetric
    ``[-(2^(b-1)-1), 2^(b-1)-1]``), ``"full"`` (symmetric ``[-2^(b-1), 2^(b-1)-1]``) or
    ``"asymmetric"``; None = restricted when ``symmetric``, else asymmetric.
    ``momentum``: EMA factor of the activation range. ``dynamic``: the activation range is taken
    from each batch at every forward (dynamic post-training quantization; no EMA, no state).
    ``per_token`` (with ``dynamic``): one range per token (over the last dimension) instead of
    one per batch.
    ``learned``: ``None`` (ranges are statistics: max-abs / EMA) or the gradient rule of a learned
    scale (``"lsq"``, ``"lsq_unscaled"``; see ``qbert.quant.learned``): the weight scale and the
    input's scale (and, asymmetric, its offset) become trainable parameters of the module; the
    weight is then always symmetric and ``symmetric`` applies to the input only.
    ``attn_operands`` (a self-attention's query/key/value projection, learned scales only): its
    output, an operand of the attention matmuls, is quantized at ``a_bits`` too; set on all
    three projections of a self-attention, the attention probabilities are as well (see
    ``qbert.quant.attention``). ``integer_zero_point`` (learned scales only): an asymmetric
    input's offset is kept on the integer grid, ``offset = -zero_point * step``.
    """

    w_bits: int = 8
    groups: Groups = 1
    a_bits: int = FLOAT_BITS
    symmetric: bool = True
    range: str = "minmax"
    percentile: float = 99.99
    momentum: float = 0.9
    dynamic: bool = False
    learned: Optional[str] = None
    w_range: Optional[str] = None
    w_grid: Optional[str] = None
    per_token: bool = False
    attn_operands: bool = False
    integer_zero_point: bool = False

    @property
    def weight_range(self) -> str:
        """The weight's range method (``w_range``, else ``range``)."""
        return self.w_range or self.range

    @property
    def weight_grid(self) -> str:
        """The weight's grid (``w_grid``, else what ``symmetric`` implies; a learned weight step
        is always on the restricted symmetric grid, whatever ``symmetric`` says of the input)."""
        if self.learned is not None:
            return "restricted"
        return self.w_grid or ("restricted" if self.symmetric else "asymmetric")

    @property
    def weight_symmetric(self) -> bool:
        """Whether the weight has no zero point (a restricted or full symmetric grid)."""
        return grid_flags(self.weight_grid)[0]

    def __post_init__(self) -> None:
        for field in ("w_bits", "a_bits"):
            v = getattr(self, field)
            if isinstance(v, bool) or not isinstance(v, int) or v not in SUPPORTED_BITS:
                raise ValueError(f"QuantSpec.{field}={v!r} is not supported: use 2..8, or 32 for float")
        if self.w_bits == FLOAT_BITS and self.a_bits == FLOAT_BITS:
            raise ValueError("QuantSpec.w_bits and a_bits are both 32: use None to keep a module float")
        g = self.groups
        if g != CHANNEL and (isinstance(g, bool) or not isinstance(g, int) or g < 1):
            raise ValueError(f"QuantSpec.groups={g!r} must be a positive int or {CHANNEL!r}")
        if not isinstance(self.symmetric, bool):
            raise ValueError(f"QuantSpec.symmetric={self.symmetric!r} must be a bool")
        if self.range not in RANGE_METHODS:
            raise ValueError(f"QuantSpec.range={self.range!r} must be one of {RANGE_METHODS}")
        if isinstance(self.percentile, bool) or not 0.0 < float(self.percentile) <= 100.0:
            raise ValueError(f"QuantSpec.percentile={self.percentile!r} must be in (0, 100]")
        if isinstance(self.momentum, bool) or not 0.0 <= float(self.momentum) < 1.0:
            raise ValueError(f"QuantSpec.momentum={self.momentum!r} must be in [0, 1)")
        if not isinstance(self.dynamic, bool):
            raise ValueError(f"QuantSpec.dynamic={self.dynamic!r} must be a bool")
        if self.learned is not None and self.learned not in SCALE_GRADS:
            raise ValueError(f"QuantSpec.learned={self.learned!r} must be None or one of {SCALE_GRADS}")
        if not isinstance(self.per_token, bool) or (self.per_token and not self.dynamic):
            raise ValueError(f"QuantSpec.per_token={self.per_token!r}: per-token input ranges are taken at every "
                             "forward, so they need dynamic=True (an EMA of one token's range means nothing)")
        if self.learned is not None and self.dynamic:
            raise ValueError("QuantSpec: a learned scale cannot also be dynamic (per-batch) ranges")
        if self.w_range is not None and self.w_range not in WEIGHT_RANGE_METHODS:
            raise ValueError(f"QuantSpec.w_range={self.w_range!r} must be None or one of {WEIGHT_RANGE_METHODS}")
        if self.w_grid is not None and self.w_grid not in GRIDS:
            raise ValueError(f"QuantSpec.w_grid={self.w_grid!r} must be None or one of {GRIDS}")
        for field in ("attn_operands", "integer_zero_point"):
            if not isinstance(getattr(self, field), bool):
                raise ValueError(f"QuantSpec.{field}={getattr(self, field)!r} must be a bool")
            if getattr(self, field) and (self.learned is None or self.a_bits == FLOAT_BITS):
                raise ValueError(f"QuantSpec.{field} is implemented for learned (LSQ) input quantizers only: "
                                 "it needs learned set and a_bits < 32")
        if self.integer_zero_point and self.symmetric and not self.attn_operands:
            raise ValueError("QuantSpec.integer_zero_point: a symmetric input has no offset to round "
                             "(set symmetric=False, or attn_operands for the probabilities' offset)")
        if self.learned is not None and (self.w_range is not None or self.w_grid is not None):
            raise ValueError("QuantSpec: a learned weight scale is its own range on the restricted symmetric grid; "
                             "w_range and w_grid must stay None")

    def replace(self, **changes: Any) -> "QuantSpec":
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        for name in ADDED_FLAGS:  # added later: plans (and packed files) without them read as before
            if not d[name]:
                del d[name]
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "QuantSpec":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"QuantSpec: unknown field(s) {unknown}; known: {sorted(known)}")
        return cls(**dict(d))


SpecLike = Union[QuantSpec, Mapping[str, Any], None]
PlanEntry = tuple[str, Optional[QuantSpec]]
Plan = list[PlanEntry]
PlanLike = Union[Mapping[str, SpecLike], Sequence[Sequence[Any]]]


def _to_spec(key: str, spec: SpecLike) -> Optional[QuantSpec]:
    if spec is None or isinstance(spec, QuantSpec):
        return spec
    if isinstance(spec, Mapping):
        return QuantSpec.from_dict(spec)
    raise TypeError(f"plan entry {key!r}: spec must be a QuantSpec, a dict or None, got {type(spec).__name__}")


def normalize_plan(plan: PlanLike) -> Plan:
    """Any accepted plan form -> ``[(key, QuantSpec | None), ...]``; validates keys/regexes."""
    items = list(plan.items()) if isinstance(plan, Mapping) else [tuple(e) for e in plan]
    out: Plan = []
    for item in items:
        if len(item) != 2 or not isinstance(item[0], str) or not item[0]:
            raise ValueError(f"plan entry {item!r} must be a (non-empty name or 're:' regex, spec) pair")
        key = item[0]
        if key.startswith(REGEX_PREFIX):
            try:
                re.compile(key[len(REGEX_PREFIX):])
            except re.error as e:
                raise ValueError(f"plan entry {key!r}: invalid regex ({e})") from None
        out.append((key, _to_spec(key, item[1])))
    return out


def plan_to_dict(plan: PlanLike) -> dict[str, Optional[dict[str, Any]]]:
    """JSON-able ``{key: spec-dict or None}`` (JSON objects keep insertion order in Python)."""
    out: dict[str, Optional[dict[str, Any]]] = {}
    for key, spec in normalize_plan(plan):
        if key in out:
            raise ValueError(f"plan entry {key!r} appears twice; the second one could never win")
        out[key] = None if spec is None else spec.to_dict()
    return out


def plan_from_dict(d: PlanLike) -> Plan:
    """Inverse of ``plan_to_dict`` (also accepts a list of pairs, e.g. from YAML)."""
    return normalize_plan(d)


def key_matches(key: str, name: str) -> bool:
    """Whether a plan key names ``name`` (exact equality, or ``re:`` fullmatch)."""
    if key.startswith(REGEX_PREFIX):
        return re.fullmatch(key[len(REGEX_PREFIX):], name) is not None
    return key == name


def assign(plan: PlanLike, modules: Iterable[tuple[str, str, bool]]) -> dict[str, QuantSpec]:
    """Resolve a plan against ``(name, type_name, quantizable)`` triples -> ``{name: spec}``.

    Shared by ``quantize_`` (real modules) and the size accounting (a synthetic module list),
    so both apply a plan identically. See the module docstring for the rules and errors.
    """
    entries = normalize_plan(plan)
    if not entries:
        raise ValueError("empty precision plan: it would quantize nothing")
    compiled = [
        (key, spec, re.compile(key[len(REGEX_PREFIX):]) if key.startswith(REGEX_PREFIX) else None)
        for key, spec in entries
    ]
    matched = [False] * len(compiled)
    chosen: dict[str, QuantSpec] = {}
    for name, type_name, quantizable in modules:
        if not name:  # the root module is never replaced
            continue
        winner = None
        for i, (key, spec, rx) in enumerate(compiled):
            hit = key == name if rx is None else quantizable and rx.fullmatch(name) is not None
            if not hit:
                continue
            matched[i] = True
            if winner is None:
                winner = i
                if spec is not None and not quantizable:
                    raise TypeError(
                        f"plan entry {key!r} puts a QuantSpec on {name!r}, a {type_name}; "
                        "only nn.Linear and nn.Embedding modules can be quantized"
                    )
                if spec is not None:
                    chosen[name] = spec
    unmatched = [key for (key, _, _), m in zip(compiled, matched) if not m]
    if unmatched:
        raise ValueError("plan entries match no quantizable module: " + ", ".join(f"'{k}'" for k in unmatched))
    if not chosen:
        raise ValueError("precision plan quantizes no module (every match maps to None)")
    return chosen
