"""One table row per job, read from its ``results.json`` (or ``error.json``) and nothing else.

A row names the method as the papers do (DirectQ, Q-BERT, Q-BERT MP 2/3, Q8BERT, ...), its bit
widths, its metric and its size; ``variant`` identifies the row across seeds (the config hash
with the seed and the seed-dependent start point left out), so seeds can be averaged.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Optional

from qbert.report.record import config_hash

FLOAT_BITS = 32
# Keys that differ between seeds of one table row: the seed itself and what is derived from it.
SEED_KEYS = ("seed", "init_from")
SEED_SECTION_KEYS = {"distill": ("teacher",), "hessian": ("seed",)}


@dataclass
class Row:
    task: str
    model: str
    experiment: str
    method: str  # as the papers name it: "Baseline", "DirectQ", "Q-BERT MP", ...
    w_bits: str  # "32", "4", "2/3 MP", "2.5 (3/3/2/2/2/2)": the column as a paper prints it
    mean_w_bits: float  # for plots: the mean encoder weight width
    e_bits: int
    a_bits: int
    groups: Optional[int]
    metric: str  # e.g. "dev/accuracy"
    value: Optional[float]  # None: the job failed
    size_wo_e_mib: Optional[float]  # encoder size, the paper's "Size w/o-e"
    seed: int
    config_hash: str
    variant: str
    status: str = "finished"  # finished | reused | failed
    error: Optional[str] = None
    layer_bits: Optional[list[int]] = None
    omega: Optional[list[float]] = None  # Hessian sensitivity per layer (qbert_mp)
    wall_seconds: Optional[float] = None
    path: Optional[str] = None
    family: str = "qbert"  # which paper's table the row belongs to: qbert | q8bert | mkq
    extra: dict = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def variant_hash(config: dict) -> str:
    """The config hash without the seed and what derives from it: one row across seeds."""
    return config_hash(config, SEED_KEYS, SEED_SECTION_KEYS)


def method_name(method: str, quant: dict, config: dict) -> tuple[str, str]:
    """(the method's name, its w-bits column) from the config of a job."""
    w = str(quant.get("w_bits"))
    if method == "none":
        return "Baseline", str(FLOAT_BITS)
    if method == "directq":
        return "DirectQ", w
    if method == "qbert":
        return "Q-BERT", w
    if method == "qbert_mp":
        allocation = quant.get("allocation", "rule")
        by_trace = (config.get("hessian") or {}).get("sensitivity") == "trace"
        suffix = " (trace)" if by_trace and allocation != "manual" else ""
        if allocation == "ilp":
            return f"Q-BERT MP ILP{suffix}", "ILP"
        if allocation == "manual":
            return "Q-BERT MP manual", "manual"
        return f"Q-BERT MP{suffix}", f"{quant['w_bits']}/{quant['high_bits']} MP"
    if method == "ablation":
        return f"Q-BERT, {quant.get('module')} only", w
    if method == "q8bert":
        return "Q8BERT", w
    if method == "q8bert_ptq":
        return "Dynamic PTQ", w
    if method == "mkq":
        name = "MKQ-BERT" if (config.get("distill") or {}).get("enabled") else "MKQ-BERT w/o KD"
        if quant.get("scale_grad", "lsq") != "lsq":
            name += f" ({quant['scale_grad']})"
        return name, f"{w} (a{quant.get('a_bits')})"
    return method, w


def family(method: str) -> str:
    return {"q8bert": "q8bert", "q8bert_ptq": "q8bert", "mkq": "mkq"}.get(method, "qbert")


def from_results(results: dict, path: str | None = None) -> Row:
    config = results.get("config") or {}
    quant = config.get("quant") or {}
    method = results.get("method", quant.get("method", "none"))
    name, w_label = method_name(method, quant, config)
    mp = results.get("mixed_precision") or None
    quantized = method != "none"
    mean_bits = (float(mp["mean_bits"]) if mp else float(quant.get("w_bits", FLOAT_BITS)) if quantized
                 else float(FLOAT_BITS))
    if mp and w_label in ("ILP", "manual"):
        w_label = f"{mean_bits:g} ({'/'.join(map(str, mp['bits']))})"
    size = (results.get("size") or {}).get("encoder") or {}
    return Row(
        task=results.get("task", config.get("task", {}).get("name", "?")),
        model=results.get("model", "?"),
        experiment=results.get("experiment") or config.get("experiment_name", "default"),
        method=name, w_bits=w_label, mean_w_bits=mean_bits, **_widths(method, quant),
        metric=results.get("primary_metric_name", "?"),
        value=results.get("primary_metric"),
        size_wo_e_mib=size.get("mib"),
        seed=int(results.get("seed", config.get("seed", 0))),
        config_hash=results.get("config_hash", "?"),
        variant=variant_hash(config),
        status="reused" if results.get("reused_from") else "finished",
        layer_bits=list(mp["bits"]) if mp else None,
        omega=_omega((mp or {}).get("table")),
        wall_seconds=(results.get("timing_seconds") or {}).get("wall"),
        path=path,
        family=family(method),
    )


def _widths(method: str, quant: dict) -> dict[str, Any]:
    """e-bits, a-bits and row groups per matrix as quantized (DirectQ: one range per matrix)."""
    if method == "none":
        return {"e_bits": FLOAT_BITS, "a_bits": FLOAT_BITS, "groups": None}
    groups = None if "groups" not in quant else 1 if method == "directq" else int(quant["groups"])
    return {"e_bits": int(quant.get("e_bits", FLOAT_BITS)), "a_bits": int(quant.get("a_bits", FLOAT_BITS)),
            "groups": groups}


def _omega(table: Optional[list]) -> Optional[list[float]]:
    """Ω per layer from the recorded Hessian table, when the run has one."""
    if not table:
        return None
    try:
        return [float(entry["omega"]) for entry in table]
    except (KeyError, TypeError, ValueError):
        return None


def from_error(failure: dict, path: str | None = None) -> Row:
    config = failure.get("config") or {}
    quant = config.get("quant") or {}
    method = failure.get("method", quant.get("method", "none"))
    name, w_label = method_name(method, quant, config)
    quantized = method != "none"
    task = failure.get("task", "?")
    metric = (config.get("task") or {}).get("metric", "?")
    return Row(
        task=task, model=failure.get("model", "?"), experiment=failure.get("experiment", "default"),
        method=name, w_bits=w_label,
        mean_w_bits=float(quant.get("w_bits", FLOAT_BITS)) if quantized else float(FLOAT_BITS),
        **_widths(method, quant), metric=metric, value=None, size_wo_e_mib=None, seed=int(failure.get("seed", 0)),
        config_hash=failure.get("config_hash", "?"), variant=variant_hash(config), status="failed",
        error=f"{failure.get('error_type', 'Error')}: {failure.get('message', '')}",
        path=path, family=family(method),
    )
