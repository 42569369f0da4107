"""One table row per job, read from its ``results.json`` (or ``error.json``) and nothing else.

A row names the method as the papers do (DirectQ, Q-BERT, Q-BERT MP 2/3, Q8BERT, ...), its bit
widths, its metric and its size; ``variant`` identifies the row across seeds (the config hash
with the seed and the seed-dependent start point left out), so seeds can be averaged.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Optional

from qbert import methods
from qbert.report.record import config_hash
from qbert.report.widths import Widths, widths_from_map, w_bits_label

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
    settings: dict = field(default_factory=dict)  # flat config ("quant.lr" -> value), seed keys left out

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def flat_settings(config: dict) -> dict[str, Any]:
    """The config as dotted keys, without what varies between seeds of one row or changes only
    where a run writes (the config hash's view of it): what can tell two rows of one method and
    width apart."""
    from qbert.report.record import semantic_config

    flat: dict[str, Any] = {}

    def walk(prefix: str, value: Any) -> None:
        if isinstance(value, dict):
            for key, inner in value.items():
                walk(f"{prefix}{key}.", inner)
        else:
            flat[prefix.rstrip(".")] = value

    walk("", semantic_config(config, SEED_KEYS, SEED_SECTION_KEYS))
    return flat


def variant_hash(config: dict) -> str:
    """The config hash without the seed and what derives from it: one row across seeds."""
    return config_hash(config, SEED_KEYS, SEED_SECTION_KEYS)


def from_results(results: dict, path: str | None = None) -> Row:
    config = results.get("config") or {}
    method = results.get("method", (config.get("quant") or {}).get("method", "none"))
    name = methods.label(config)
    widths = widths_from_map(results.get("quantization_map"))
    size = (results.get("size") or {}).get("encoder") or {}
    mp = results.get("mixed_precision") or None
    return Row(
        task=results.get("task", config.get("task", {}).get("name", "?")),
        model=results.get("model", "?"),
        experiment=results.get("experiment") or config.get("experiment_name", "default"),
        method=name, w_bits=w_bits_label(widths, name), mean_w_bits=widths.mean_w_bits,
        e_bits=widths.e_bits, a_bits=widths.a_bits, groups=widths.groups,
        metric=results.get("primary_metric_name", "?"),
        value=results.get("primary_metric"),
        size_wo_e_mib=size.get("mib"),
        seed=int(results.get("seed", config.get("seed", 0))),
        config_hash=results.get("config_hash", "?"),
        variant=variant_hash(config),
        status="reused" if results.get("reused_from") else "finished",
        layer_bits=widths.layer_bits if widths.mixed else None,
        omega=_omega((mp or {}).get("table")),
        wall_seconds=(results.get("timing_seconds") or {}).get("wall"),
        path=path,
        family=methods.family(method),
        settings=flat_settings(config),
    )


def _omega(table: Optional[list]) -> Optional[list[float]]:
    """Ω per layer from the recorded Hessian table, when the run has one."""
    if not table:
        return None
    try:
        return [float(entry["omega"]) for entry in table]
    except (KeyError, TypeError, ValueError):
        return None


# job.json / planned-job status -> the row's state (anything else that left no results: failed).
FAILURE_STATES = {"unfinished": "killed", "not_started": "not started"}


def from_error(failure: dict, path: str | None = None) -> Row:
    """A failed job quantized nothing: its row shows the widths its config asked for."""
    config = failure.get("config") or {}
    quant = config.get("quant") or {}
    method = failure.get("method", quant.get("method", "none"))
    quantized = method != "none"
    w = int(quant.get("w_bits", FLOAT_BITS)) if quantized else FLOAT_BITS
    name = methods.label(config)
    w_label = str(w)
    if method == "qbert_mp" and quant.get("allocation") == "rule" and quant.get("high_bits"):
        # the two widths the rule mixes, as a finished row of the same config would print them
        w_label = w_bits_label(Widths([w, int(quant["high_bits"])], float(w), FLOAT_BITS, FLOAT_BITS, None), name)
    # A method that does not read quant.groups quantizes with one range per matrix.
    reads_groups = method in methods.methods() and "groups" in methods.get(method).reads
    return Row(
        task=failure.get("task", "?"), model=failure.get("model", "?"), experiment=failure.get("experiment", "default"),
        method=name, w_bits=w_label, mean_w_bits=float(w),
        e_bits=int(quant.get("e_bits", FLOAT_BITS)) if quantized else FLOAT_BITS,
        a_bits=int(quant.get("a_bits", FLOAT_BITS)) if quantized else FLOAT_BITS,
        groups=(quant.get("groups") if reads_groups else 1) if quantized else None,
        metric=(config.get("task") or {}).get("metric", "?"), value=None, size_wo_e_mib=None,
        seed=int(failure.get("seed", 0)), config_hash=failure.get("config_hash", "?"), variant=variant_hash(config),
        status=FAILURE_STATES.get(failure.get("status"), "failed"),
        error=f"{failure.get('error_type', 'Error')}: {failure.get('message', '')}",
        path=path, family=methods.family(method), settings=flat_settings(config),
    )
