"""The quantization methods, each declared once: ``quant.method`` -> a ``Method``.

A method module in this package declares its name, the ``quant.*`` settings it reads, the paper
it belongs to (``family``: which paper table its rows join), how a table names its rows, and the
precision plan it builds. Adding a method is one module here plus one ``conf/quant/<name>.yaml``;
modules are found by name, nothing else is edited.

Every ``quant.*`` setting a method does not read must keep its schema default: validation refuses
anything else at start, naming the key and the method (``unread_settings``), so no setting is ever
silently ignored. Declarations import no torch (reports read them); plan builders import
``qbert.quant`` when called.
"""

from __future__ import annotations

import dataclasses
import importlib
import pkgutil
from dataclasses import dataclass
from typing import Any, Callable, Mapping, Optional, Sequence

LayerBits = Optional[Sequence[int]]
# QAT recipe: read by every method that trains (not by post-training or full precision)
TRAINING = frozenset({"epochs", "lr", "max_steps", "start"})
# activation ranges from training batches before an eval-only (post-training) run
CALIBRATION = frozenset({"calibration_batches"})
# how weight ranges and grids are chosen (statistics-range methods: qbert, qbert_mp, directq, ablation)
WEIGHT_RANGES = frozenset({"w_range", "w_percentile", "w_grid"})
# how the inputs of the encoder Linears take their ranges, per site (EMA-range methods: qbert,
# qbert_mp, directq, ablation; Q8BERT is symmetric per tensor by definition, MKQ learns its own)
INPUT_RANGES = frozenset({"a_range", "a_sites", "a_site_bits"})


@dataclass(frozen=True)
class Method:
    name: str  # quant.method
    family: str  # the paper whose tables its rows join: qbert | q8bert | mkq
    reads: frozenset[str]  # the quant.* settings it reads (method itself aside)
    build: Callable[[Any, int, LayerBits], Any]  # (QuantConfig, num_heads, layer widths) -> Plan | None
    label: Callable[[Mapping[str, Any]], str]  # resolved run config -> the name a table prints
    trains: bool = True  # False: post-training only (eval_only)
    # False: full precision, whose training is the task's own (optim.*), so the QAT recipe keys
    # (TRAINING) would be ignored: they are refused instead.
    has_qat_stage: bool = True
    note: str = ""  # what it fixes, for the error message (e.g. "8-bit by definition")
    # Its paper's recipe distils (its conf preset sets distill.enabled=true) and its label says
    # whether a run did; any other method that trains may distil too, and its label then says so.
    distills: bool = False

    def reads_when(self, eval_only: bool) -> frozenset[str]:
        """The settings read in a run: the QAT recipe only when it trains, calibration only
        after quantizing without training."""
        extra = set()
        if not eval_only and self.trains and self.has_qat_stage:
            extra |= TRAINING
        if eval_only:
            extra |= CALIBRATION
        return self.reads | extra


_REGISTRY: dict[str, Method] = {}


def register(method: Method) -> Method:
    if method.name in _REGISTRY and _REGISTRY[method.name] is not method:
        raise ValueError(f"quantization method {method.name!r} is declared twice")
    _REGISTRY[method.name] = method
    return method


def _discover() -> None:
    for info in pkgutil.iter_modules(__path__):
        importlib.import_module(f"{__name__}.{info.name}")


def methods() -> dict[str, Method]:
    if not _REGISTRY:
        _discover()
    return dict(_REGISTRY)


def get(name: str) -> Method:
    known = methods()
    if name not in known:
        raise ValueError(f"config key 'quant.method': unknown method {name!r} (known: {sorted(known)})")
    return known[name]


def unread_settings(quant: Any, eval_only: bool) -> list[str]:
    """The ``quant.*`` settings that differ from their schema default although the method does
    not read them; each as an error line naming key, value and method."""
    method = get(quant.method)
    reads = method.reads_when(eval_only)
    errors = []
    for f in dataclasses.fields(quant):
        if f.name == "method" or f.name in reads:
            continue
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        value = getattr(quant, f.name)
        if value != default:
            why = method.note or f"it reads {', '.join(sorted(reads)) or 'no quant.* setting'}"
            when = " in an eval_only run" if eval_only and f.name in TRAINING else ""
            errors.append(f"config key 'quant.{f.name}': {value!r} is not read by quant={method.name}{when} "
                          f"({why}); leave it at its default ({default!r}) or choose a method that reads it")
    return errors


def weight_range_kw(quant: Any) -> dict[str, Any]:
    """The plan builders' keyword arguments for ``quant.w_range``/``w_percentile``/``w_grid``."""
    return {"w_range": quant.w_range, "w_grid": quant.w_grid, "percentile": quant.w_percentile}


def input_range_kw(quant: Any) -> dict[str, Any]:
    """The plan builders' ``inputs`` argument for ``quant.a_range``/``a_sites``/``a_site_bits``."""
    from qbert.config import set_sites
    from qbert.quant.input_ranges import InputRanges
    return {"inputs": InputRanges(quant.a_range, set_sites(quant.a_sites), set_sites(quant.a_site_bits))}


def input_range_label(quant: Mapping[str, Any]) -> list[str]:
    """What a table adds to a method's name when its inputs or Q/K/V groups are not the default
    (empty for configs from before the keys)."""
    parts = []
    if quant.get("groups_per_head"):
        parts.append(f"{quant['groups_per_head']} groups per head")
    if (quant.get("a_range") or "ema") != "ema":
        parts.append(f"{quant['a_range']} inputs")
    from qbert.config import set_sites
    sites, widths = set_sites(quant.get("a_sites")), set_sites(quant.get("a_site_bits"))
    for site in sorted(set(sites) | set(widths)):
        parts.append(" ".join([site, *([sites[site]] if site in sites else []),
                               *([f"a{widths[site]}"] if site in widths else [])]))
    return parts


def weight_range_label(quant: Mapping[str, Any]) -> list[str]:
    """What a table adds to a method's name when its weight ranges are not the paper's (a
    resolved ``quant`` section; empty for the defaults and for configs from before the keys)."""
    parts = []
    w_range = quant.get("w_range") or "minmax"
    if w_range == "percentile":
        parts.append(f"p{quant.get('w_percentile', 99.99):g} ranges")
    elif w_range != "minmax":
        parts.append(f"{w_range} ranges")
    if quant.get("w_grid"):
        parts.append(f"{quant['w_grid']} grid")
    return parts


def with_suffix(name: str, parts: Sequence[str]) -> str:
    """``"Q-BERT"`` + ``["mse ranges"]`` -> ``"Q-BERT (mse ranges)"``."""
    return f"{name} ({', '.join(parts)})" if parts else name


def plan_for(quant: Any, num_heads: int, layer_bits: LayerBits = None):
    """The precision plan of ``quant.method`` (None: full precision). ``layer_bits``: per-layer
    widths of a mixed-precision method (from the Hessian analysis)."""
    return get(quant.method).build(quant, num_heads, layer_bits)


def normalized_distillation(config: Mapping[str, Any]) -> bool:
    """Whether a run distilled with a normalised layer-wise loss (``distill.hidden_loss`` or
    ``attention_loss`` not ``mse``; configs from before the keys: no)."""
    distill = config.get("distill") or {}
    return bool(distill.get("enabled")) and (distill.get("hidden_loss", "mse") != "mse"
                                             or distill.get("attention_loss", "mse") != "mse")


def label(config: Mapping[str, Any]) -> str:
    """How a table names a run's method, from its resolved config (a dict); a method that
    does not distil by recipe gets " + KD" (or " + normalized KD") when the run distilled, and a
    run trained from the pre-trained weights (quant.start) " (QAT during fine-tuning)"."""
    quant = config.get("quant") or {}
    name = quant.get("method") or "none"
    known = methods()
    if name not in known:
        return name
    method = known[name]
    shown = method.label(config)
    if quant.get("start", "finetuned") == "pretrained":
        shown += " (QAT during fine-tuning)"
    if not method.distills and (config.get("distill") or {}).get("enabled"):
        shown += " + normalized KD" if normalized_distillation(config) else " + KD"
    return shown


def family(name: str) -> str:
    known = methods()
    return known[name].family if name in known else "qbert"
